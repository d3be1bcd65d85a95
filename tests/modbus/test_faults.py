"""Every simulator fault is observable through the driver (over real Modbus TCP)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.base import AlarmCode, ConnectionState, RunState
from drivers.errors import DeviceRejected, DeviceTimeout, FrameError
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import FaultSpec
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import FAST_TIMEOUT_S, FakeTime, Rig, demo_pump, serve_rig


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("occlusion", AlarmCode.OCCLUSION),
        ("air_in_line", AlarmCode.AIR_IN_LINE),
        ("empty", AlarmCode.EMPTY),
        ("door_open", AlarmCode.DOOR_OPEN),
        ("hardware_fault", AlarmCode.HARDWARE_FAULT),
        ("comm_timeout", AlarmCode.COMM_TIMEOUT),
    ],
)
async def test_stopping_alarms_stop_delivery_and_are_reported(
    rig: Rig, fault: str, code: AlarmCode
) -> None:
    """Each alarm fault puts the pump in alarm, stops delivery and sets its alarm bit."""
    rig.sim.inject(fault, unit=1)
    status = await rig.driver.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {code}
    assert rig.sim.pump(1).delivered_rate_ml_h == 0
    assert rig.sim.pump(2).alarms == set()  # the other pump is untouched


@pytest.mark.asyncio
async def test_low_battery_is_an_advisory_alarm(rig: Rig) -> None:
    """Low battery raises its bit but the pump keeps infusing."""
    rig.sim.inject("low_battery", unit=1)
    status = await rig.driver.read_status()
    assert status.state is RunState.INFUSING
    assert status.alarms == {AlarmCode.LOW_BATTERY}
    assert status.battery_pct == 15


@pytest.mark.asyncio
async def test_front_panel_rate_change_is_seen_by_the_next_poll(rig: Rig) -> None:
    """A rate set at the pump (not through Modbus) shows in the programmed rate."""
    rig.sim.apply(FaultSpec.parse("1:front_panel_rate=60"))
    status = await rig.driver.read_status()
    assert status.rate_ml_h == Decimal("60.00")
    assert rig.sim.pump(1).delivered_rate_ml_h == Decimal("60.00")


@pytest.mark.asyncio
async def test_no_answer_times_out_then_recovers(rig: Rig) -> None:
    """A silent pump is a DeviceTimeout and offline; it is online again when it answers."""
    rig.sim.inject("no_answer", unit=1)
    with pytest.raises(DeviceTimeout, match=r"unit 1 read holding registers 0-25: no answer"):
        await rig.driver.read_status()
    assert rig.driver.connection is ConnectionState.OFFLINE
    rig.sim.clear("no_answer", unit=1)
    status = await rig.driver.read_status()
    assert status.state is RunState.INFUSING
    assert rig.driver.connection is ConnectionState.ONLINE


@pytest.mark.asyncio
async def test_slow_answer_beyond_the_timeout_is_a_timeout(rig: Rig) -> None:
    """An answer later than the driver's timeout is a DeviceTimeout; a quicker one is fine."""
    rig.sim.inject("slow_answer", FAST_TIMEOUT_S * 3, unit=1)
    with pytest.raises(DeviceTimeout):
        await rig.driver.read_status()
    rig.sim.inject("slow_answer", 0.05, unit=1)
    assert (await rig.driver.read_status()).state is RunState.INFUSING


@pytest.mark.asyncio
async def test_busy_device_answers_with_an_exception_response(rig: Rig) -> None:
    """Exception responses become DeviceRejected naming the request and the code."""
    rig.sim.inject("busy", unit=1)
    with pytest.raises(
        DeviceRejected, match=r"registers 0-25: exception response 6 \(DEVICE_BUSY\)"
    ):
        await rig.driver.read_status()


@pytest.mark.asyncio
async def test_answer_from_another_unit_id_is_a_frame_error(rig: Rig) -> None:
    """An answer carrying another unit id is a FrameError naming it, never a hang."""
    rig.sim.inject("wrong_unit", unit=1)
    with pytest.raises(FrameError, match="the answer came from unit id 2"):
        await rig.driver.read_status()
    rig.sim.clear("wrong_unit", unit=1)
    assert (await rig.driver.read_status()).state is RunState.INFUSING


@pytest.mark.asyncio
async def test_short_answer_is_a_frame_error(rig: Rig) -> None:
    """An answer with fewer registers than asked is a FrameError naming the block."""
    rig.sim.inject("short_answer", unit=1)
    with pytest.raises(FrameError, match="asked for 26 registers, the answer has 25"):
        await rig.driver.read_status()


@pytest.mark.asyncio
async def test_out_of_range_register_value_is_never_published(rig: Rig) -> None:
    """Battery 250 % or an undefined status is a FrameError naming register and value."""
    rig.sim.pump(1).overrides[9] = 250
    with pytest.raises(FrameError, match=r"battery \(holding register 9\): value 250"):
        await rig.driver.read_status()
    rig.sim.pump(1).overrides = {1: 7}
    with pytest.raises(FrameError, match=r"status \(holding register 1\): value 7"):
        await rig.driver.read_status()
    rig.sim.pump(1).overrides = {2: 0x8000}
    with pytest.raises(FrameError, match=r"alarms \(holding register 2\).*undefined bit"):
        await rig.driver.read_status()


@pytest.mark.asyncio
async def test_power_reset_reboots_the_pump() -> None:
    """After a power reset the pump is stopped, its heartbeat restarts and seqs are 0."""
    now = FakeTime()
    sim = ModbusPumpSimulator([demo_pump(1)], clock=SimClock(source=now))
    async with serve_rig(sim, clock=now) as rig:
        now.t += 100
        assert (await rig.driver.read_status()).heartbeat == 100
        rig.sim.inject("power_reset", unit=1)
        now.t += 2
        status = await rig.driver.read_status()
        assert status.state is RunState.STOPPED
        assert status.heartbeat == 2


@pytest.mark.asyncio
async def test_frozen_heartbeat_is_reported_after_n_polls() -> None:
    """A hung pump (registers frozen) is flagged HEARTBEAT_FROZEN; a live one is not."""
    now = FakeTime()
    sim = ModbusPumpSimulator([demo_pump(1)], clock=SimClock(source=now))
    async with serve_rig(sim, clock=now) as rig:
        for _ in range(5):
            now.t += 1
            assert AlarmCode.HEARTBEAT_FROZEN not in (await rig.driver.read_status()).alarms
        rig.sim.inject("frozen", unit=1)
        seen = []
        for _ in range(5):
            now.t += 1
            seen.append(AlarmCode.HEARTBEAT_FROZEN in (await rig.driver.read_status()).alarms)
        assert seen == [False, False, True, True, True]
        rig.sim.clear("frozen", unit=1)
        now.t += 1
        assert AlarmCode.HEARTBEAT_FROZEN not in (await rig.driver.read_status()).alarms


@pytest.mark.asyncio
async def test_vtbi_counts_down_raises_near_end_then_stops() -> None:
    """Volume integrates the rate; near-end comes before the VTBI runs out; then stopped."""
    now = FakeTime()
    cfg = demo_pump(1, rate_ml_h=Decimal(60), vtbi_ml=Decimal(10), near_end_s=120.0)
    sim = ModbusPumpSimulator([cfg], clock=SimClock(source=now))
    async with serve_rig(sim, clock=now) as rig:
        now.t += 300  # 5 min at 60 mL/h = 5 mL
        status = await rig.driver.read_status()
        assert status.volume_infused_ml == Decimal("5.00")
        assert status.vtbi_ml == Decimal("5.00")
        assert status.alarms == frozenset()
        now.t += 240  # 1 mL left: less than 120 s of delivery
        status = await rig.driver.read_status()
        assert status.state is RunState.INFUSING
        assert AlarmCode.NEAR_END in status.alarms
        now.t += 600
        status = await rig.driver.read_status()
        assert status.state is RunState.STOPPED
        assert status.volume_infused_ml == Decimal("10.00")
        assert status.vtbi_ml == 0
        assert status.battery_pct is not None
        assert status.battery_pct < 100


@pytest.mark.asyncio
async def test_command_never_confirmed_is_uncertain(rig: Rig) -> None:
    """A hung pump that takes the write but never shows executed_seq -> uncertain."""
    rig.sim.inject("frozen", unit=1)
    result = await rig.driver.set_rate(Decimal(30))
    assert result.outcome.value == "uncertain"
    assert "executed_seq still" in result.detail
