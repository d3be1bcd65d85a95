"""The PHD ULTRA driver against the chain simulator over TCP: the New Era fault matrix again.

Every write is pre-read, written, read back and judged (applied / failed / uncertain); writes
never raise; nothing is ever re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest

from drivers.backoff import Backoff
from drivers.base import AlarmCode, ConnectionState, RunState, WriteOutcome, WriteResult
from drivers.errors import DeviceTimeout, DriverError, FrameError
from drivers.newera import NewEraPumpDriver
from drivers.phd import PhdLine, PhdPumpDriver
from drivers.phd.driver import RUN_STATES
from drivers.phd.grammar import ERRORS, Prompt
from drivers.serial.line import PortUnavailable
from sim_devices.phd_pump import Fault
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator
from tests.phd.conftest import DIAMETER, FAST_TIMEOUT_S

WRITES = ["set_rate", "start", "stop", "pause"]
ON = {"set_rate": "irate", "start": "irun", "stop": "stop", "pause": "stop"}


def write_call(driver: PhdPumpDriver, action: str) -> Awaitable[WriteResult]:
    calls: dict[str, Callable[[], Awaitable[WriteResult]]] = {
        "set_rate": lambda: driver.set_rate(Decimal(12)),
        "start": driver.start,
        "stop": driver.stop,
        "pause": driver.pause,
    }
    return calls[action]()


@pytest.mark.asyncio
async def test_status_identity_and_capabilities(pump0: PhdPumpDriver) -> None:
    """irate, status and tvolume make the status; the syringe gives the rate range."""
    status = await pump0.read_status()
    assert (status.state, status.rate_ml_h, status.vtbi_ml) == (RunState.INFUSING, 9, None)
    assert status.volume_infused_ml is not None
    assert status.volume_infused_ml >= 0
    identity = await pump0.identity()
    assert (identity.model, identity.firmware) == ("PHD ULTRA", "PHD ULTRA 3.0.4")
    caps = pump0.capabilities
    assert (caps.min_rate_ml_h, caps.max_rate_ml_h, caps.resolution_ml_h) == (
        Decimal("0.01"),
        Decimal("6357.05"),
        Decimal("0.01"),
    )


@pytest.mark.asyncio
async def test_every_prompt_has_a_run_state() -> None:
    """Idle and target reached are stopped, '>' infusing, '<' and '*' an alarm."""
    assert set(RUN_STATES) == set(Prompt)


@pytest.mark.asyncio
async def test_set_rate_is_applied_after_irate_and_motor_read_back(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """irate 12.34 ml/hr: applied when irate reads 12.34 and the status line's fL/s match."""
    result = await pump0.set_rate(Decimal("12.34"))
    assert result.outcome is WriteOutcome.APPLIED, result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal("12.34")
    assert sim.pumps[0].rate_ml_h == Decimal("12.34")


@pytest.mark.asyncio
async def test_a_motor_that_keeps_its_old_speed_makes_the_rate_write_uncertain(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """irate reads back 12 but the status line still shows the motor at 9 mL/h: the pump did
    not do what it says, so the write is uncertain, never applied."""
    pump = sim.pumps[0]
    old_speed = pump._cmd_status("")
    pump._cmd_status = lambda _args: old_speed  # type: ignore[method-assign]
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
    assert "is not rate 12.00 mL/h" in result.detail
    assert pump.rate_ml_h == 12


@pytest.mark.asyncio
async def test_a_stopped_pump_takes_a_rate_on_the_irate_read_back_alone(
    sim: PhdSimulator,
) -> None:
    """Pump 12 is stopped (motor at 0 fL/s): the irate read-back decides; applied."""
    driver = PhdPumpDriver(sim.url, 12, timeout_s=FAST_TIMEOUT_S)
    await driver.connect()
    try:
        result = await driver.set_rate(Decimal("3.5"))
    finally:
        await driver.close()
    assert result.outcome is WriteOutcome.APPLIED
    assert sim.pumps[12].rate_ml_h == Decimal("3.5")


@pytest.mark.asyncio
async def test_out_of_range_rate_fails_and_is_verified_unchanged(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """Above the syringe's maximum the pump says 'Out of range': failed, old rate read back."""
    result = await pump0.set_rate(Decimal(7000))
    assert result.outcome is WriteOutcome.FAILED
    assert "'Out of range'" in result.detail
    assert "unchanged" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 9
    assert sim.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize("text", sorted(ERRORS))
async def test_every_error_reply_verified_unchanged_is_failed_with_its_meaning(
    sim: PhdSimulator, pump0: PhdPumpDriver, text: str
) -> None:
    """Each error line of the grammar in reply to irate, pump really unchanged: failed."""
    sim.pumps[0].reject_with = text
    sim.pumps[0].inject(Fault.REJECT, count=1, on="irate")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.FAILED
    assert ERRORS[text] in result.detail
    assert "unchanged" in result.detail
    assert result.readback is not None
    assert (result.readback.rate_ml_h, result.readback.state) == (9, RunState.INFUSING)


@pytest.mark.asyncio
@pytest.mark.parametrize("text", sorted(ERRORS))
async def test_every_error_reply_the_pump_applied_anyway_is_applied(
    sim: PhdSimulator, pump0: PhdPumpDriver, text: str
) -> None:
    """The pump answers irate with an error line yet changes the rate: the read-back decides."""
    sim.pumps[0].reject_with = text
    sim.pumps[0].inject(Fault.REFUSE_BUT_APPLY, count=1, on="irate")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert "shows it applied" in result.detail
    assert sim.pumps[0].rate_ml_h == 12


@pytest.mark.asyncio
async def test_a_refusal_followed_by_another_change_is_uncertain(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """irate refused while the pump stalls meanwhile: not 'failed' (state changed): uncertain."""
    pump = sim.pumps[0]
    pump.inject(Fault.REJECT, count=1, on="irate")
    original = pump.handle

    def handle_and_stall(command, now):  # type: ignore[no-untyped-def]
        reply = original(command, now)
        if command.name == "irate" and command.args:
            pump.stall()
        return reply

    pump.handle = handle_and_stall  # type: ignore[method-assign]
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
    assert "changed" in result.detail


@pytest.mark.asyncio
async def test_stall_is_reported_and_latched_until_acknowledged(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """Prompt '*' and flag S: alarm 'stalled'; after stop (':') it stays latched until ack."""
    sim.pumps[0].stall()
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {AlarmCode.STALLED}
    assert (await pump0.stop()).outcome is WriteOutcome.APPLIED
    assert (await pump0.read_status()).alarms == {AlarmCode.STALLED}
    ack = await pump0.acknowledge_alarms()
    assert ack.outcome is WriteOutcome.APPLIED
    assert ack.readback is not None
    assert (ack.readback.state, ack.readback.alarms) == (RunState.STOPPED, frozenset())


@pytest.mark.asyncio
async def test_target_reached_reads_stopped_with_the_target(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """'T*' after tvolume is infused: stopped (not an alarm), vtbi read back in mL."""
    pump = sim.pumps[0]
    pump.target_ml = (pump.infused_ml + Decimal("0.001")).quantize(Decimal("0.001"))
    await sim.wait_until(lambda: pump.prompt is Prompt.TARGET_REACHED, within_s=2)
    status = await pump0.read_status()
    assert status.state is RunState.STOPPED
    assert status.vtbi_ml == pump.target_ml.normalize()


@pytest.mark.asyncio
async def test_power_reset_is_seen_as_a_stop_and_a_device_reset(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """After a power reset the pump is idle and its infused volume restarts at zero."""
    pump = sim.pumps[0]
    await sim.wait_until(lambda: pump.infused_ml > 0, within_s=2)
    await pump0.read_status()
    pump.power_reset()
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {AlarmCode.DEVICE_RESET}
    assert (await pump0.start()).outcome is WriteOutcome.APPLIED
    assert (await pump0.read_status()).alarms == frozenset()


@pytest.mark.asyncio
async def test_front_panel_change_is_read_as_it_is(sim: PhdSimulator, pump0: PhdPumpDriver) -> None:
    """A rate typed at the pump is what the next status says (the gate judges it)."""
    sim.pumps[0].front_panel_rate(Decimal("30.5"))
    assert (await pump0.read_status()).rate_ml_h == Decimal("30.5")


@pytest.mark.asyncio
async def test_withdrawing_pump_is_an_alarm_and_start_infuses(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """Prompt '<': alarm 'withdrawing' (not delivering); irun turns it forward: applied."""
    sim.pumps[0].prompt = Prompt.WITHDRAWING
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {AlarmCode.WITHDRAWING}
    result = await pump0.start()
    assert result.outcome is WriteOutcome.APPLIED
    assert sim.pumps[0].prompt is Prompt.INFUSING


@pytest.mark.asyncio
async def test_pause_stops_an_infusing_pump_and_says_there_is_no_pause(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """No pause command: pause stops and says so; pausing a stopped pump is not sent."""
    result = await pump0.pause()
    assert result.outcome is WriteOutcome.APPLIED
    assert "no pause" in result.detail
    assert sim.pumps[0].prompt is Prompt.IDLE
    seen = sim.pumps[0].commands_seen
    again = await pump0.pause()
    assert again.outcome is WriteOutcome.FAILED
    assert again.detail.startswith("not sent: ")
    assert sim.pumps[0].commands_seen == seen + 3  # the pre-read only


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [Fault.GARBLE, Fault.DROP_REPLY, Fault.WRONG_ADDRESS])
async def test_write_is_not_sent_when_the_pre_read_fails(
    sim: PhdSimulator, pump0: PhdPumpDriver, fault: Fault
) -> None:
    """No valid answer to the pre-read: failed "not sent", and the pump never saw irate."""
    sim.pumps[0].inject(fault)
    seen = sim.pumps[0].commands_seen
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: pre-read failed")
    assert sim.pumps[0].commands_seen == seen + 1
    assert sim.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize("action", WRITES)
async def test_link_dropping_after_the_write_is_uncertain(
    sim: PhdSimulator, pump0: PhdPumpDriver, action: str
) -> None:
    """Executed, then the line drops before the reply: uncertain, no read-back, never raised."""
    pump = sim.pumps[0]
    if action == "start":
        pump.front_panel_stop()
    pump.inject(Fault.HANG_UP, count=1, on=ON[action])
    result = await write_call(pump0, action)
    assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
    assert result.readback is None
    assert "read-back failed" in result.detail
    assert Fault.HANG_UP not in pump.faults


@pytest.mark.asyncio
async def test_no_reply_and_an_unchanged_read_back_is_uncertain(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """irate never executed nor answered: the pump did not say no, so uncertain."""
    sim.pumps[0].inject(Fault.SILENCE, count=1, on="irate")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.UNCERTAIN
    assert "no valid reply" in result.detail
    assert "unchanged" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "fault", [Fault.GARBLE, Fault.DROP_REPLY, Fault.TRUNCATE, Fault.OVERLONG, Fault.WRONG_ADDRESS]
)
async def test_lost_or_garbled_reply_with_matching_read_back_is_applied(
    sim: PhdSimulator, pump0: PhdPumpDriver, fault: Fault
) -> None:
    """Only the write's reply is bad: the read-back proves the rate: applied, and said so."""
    sim.pumps[0].inject(fault, count=1, on="irate")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED, result.detail
    assert "reply lost" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 12


@pytest.mark.asyncio
async def test_noise_before_a_good_reply_is_skipped(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """A corrupted copy then the real reply: the garbage is dropped, the reply is read."""
    sim.pumps[0].inject(Fault.NOISE)
    assert (await pump0.read_status()).rate_ml_h == 9
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert result.detail == "rate 12.00 mL/h"


@pytest.mark.asyncio
async def test_slow_reply_within_the_timeout_is_accepted(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """A reply delayed below the timeout is fine; beyond it, DeviceTimeout."""
    pump = sim.pumps[0]
    pump.reply_delay_s = FAST_TIMEOUT_S / 3
    pump.inject(Fault.SLOW, count=1)
    assert (await pump0.read_status()).rate_ml_h == 9
    pump.reply_delay_s = FAST_TIMEOUT_S * 2
    pump.inject(Fault.SLOW, count=1)
    with pytest.raises(DeviceTimeout):
        await pump0.read_status()


@pytest.mark.asyncio
async def test_late_reply_is_not_taken_as_the_next_answer(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """The late reply of a timed-out query is discarded; the next query gets its own answer."""
    pump = sim.pumps[0]
    pump.reply_delay_s = FAST_TIMEOUT_S * 1.5
    pump.inject(Fault.SLOW, count=1)
    with pytest.raises(DeviceTimeout):
        await pump0.read_status()
    status = await pump0.read_status()
    assert (status.rate_ml_h, status.state) == (9, RunState.INFUSING)


@pytest.mark.asyncio
async def test_silent_pump_goes_offline_then_online_again(
    sim: PhdSimulator, pump0: PhdPumpDriver
) -> None:
    """Three failed transactions mark the pump offline; the next answer brings it online."""
    sim.pumps[0].inject(Fault.SILENCE)
    for _ in range(3):
        with pytest.raises(DeviceTimeout):
            await pump0.read_status()
    assert pump0.connection is ConnectionState.OFFLINE
    sim.pumps[0].clear_faults()
    await pump0.read_status()
    assert pump0.connection is ConnectionState.ONLINE


@pytest.mark.asyncio
async def test_a_chain_of_pumps_is_serialised_and_kept_apart(sim: PhdSimulator) -> None:
    """Concurrent writes to addresses 0 and 12 share one line and reach the right pump each."""
    a = PhdPumpDriver(sim.url, 0, diameter_mm=DIAMETER, timeout_s=FAST_TIMEOUT_S)
    b = PhdPumpDriver(f"tcp://{sim.url.removeprefix('socket://')}", 12, timeout_s=FAST_TIMEOUT_S)
    await a.connect()
    await b.connect()
    try:
        ra, rb = await asyncio.gather(a.set_rate(Decimal(11)), b.set_rate(Decimal(3)))
        assert (ra.outcome, rb.outcome) == (WriteOutcome.APPLIED, WriteOutcome.APPLIED)
        assert (sim.pumps[0].rate_ml_h, sim.pumps[12].rate_ml_h) == (11, 3)
        assert a._line is b._line  # one line object, one lock
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_one_url_cannot_be_two_vendors_lines(sim: PhdSimulator) -> None:
    """A New Era driver on a PHD chain's URL is refused by name before anything is sent."""
    a = PhdPumpDriver(sim.url, 0, diameter_mm=DIAMETER, timeout_s=FAST_TIMEOUT_S)
    await a.connect()
    try:
        with pytest.raises(DriverError, match="already a phd line, not a newera one"):
            await NewEraPumpDriver(sim.url, 0).connect()
    finally:
        await a.close()


@pytest.mark.asyncio
async def test_a_pump_with_another_syringe_or_address_is_refused_at_connect(
    sim: PhdSimulator,
) -> None:
    """Configured 14.5 mm but the pump holds 26.59 mm: DriverError naming both; nothing set."""
    driver = PhdPumpDriver(sim.url, 0, diameter_mm=Decimal("14.5"), timeout_s=FAST_TIMEOUT_S)
    try:
        with pytest.raises(DriverError, match=r"26\.5900 mm syringe, configured 14\.5 mm"):
            await driver.connect()
    finally:
        await driver.close()
    assert sim.pumps[0].diameter_mm == DIAMETER
    absent = PhdPumpDriver(sim.url, 7, timeout_s=FAST_TIMEOUT_S)
    try:
        with pytest.raises(DeviceTimeout, match="pump 07"):
            await absent.connect()
    finally:
        await absent.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", ["-1", "NaN", "1e9", "12.345"])
async def test_unwritable_rates_are_refused_before_anything_is_sent(
    sim: PhdSimulator, pump0: PhdPumpDriver, rate: str
) -> None:
    """Negative, NaN, huge or finer than the pump step: failed "not sent", naming the limit."""
    seen = sim.pumps[0].commands_seen
    result = await pump0.set_rate(Decimal(rate))
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: rate ")
    assert sim.pumps[0].commands_seen == seen


@pytest.mark.asyncio
@pytest.mark.parametrize("action", WRITES)
async def test_writes_on_a_dead_link_fail_as_not_sent_and_never_raise(action: str) -> None:
    """The chain's line is gone: every write is failed "not sent: ..." and nothing is sent."""
    simulator = PhdSimulator([PhdPumpSetup(rate_ml_h=Decimal(9), running=True)])
    async with simulator.serving("tcp://127.0.0.1:0"):
        line = PhdLine(
            simulator.url, timeout_s=FAST_TIMEOUT_S, backoff=Backoff(initial_s=5, maximum_s=5)
        )
        driver = PhdPumpDriver(simulator.url, line=line, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        seen = simulator.pumps[0].commands_seen
    try:
        with contextlib.suppress(DriverError):
            await driver.read_status()
        result = await write_call(driver, action)
    finally:
        await driver.close()
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: "), result.detail
    assert simulator.pumps[0].commands_seen == seen


@pytest.mark.asyncio
@pytest.mark.parametrize("action", WRITES)
async def test_writes_before_connect_fail_as_not_sent(sim: PhdSimulator, action: str) -> None:
    """No line yet: failed "not sent", the simulator saw nothing."""
    driver = PhdPumpDriver(sim.url, 0, timeout_s=FAST_TIMEOUT_S)
    result = await write_call(driver, action)
    assert result.outcome is WriteOutcome.FAILED
    assert "not connected" in result.detail
    assert sim.pumps[0].commands_seen == 0


@pytest.mark.asyncio
async def test_reconnects_after_the_link_drops() -> None:
    """The simulator going away marks the pump offline; when it returns, the driver is back."""
    setup = [PhdPumpSetup(rate_ml_h=Decimal(9), running=True)]
    first = PhdSimulator(setup)
    async with first.serving("tcp://127.0.0.1:0"):
        line = PhdLine(
            first.url, timeout_s=FAST_TIMEOUT_S, backoff=Backoff(initial_s=0.01, maximum_s=0.02)
        )
        driver = PhdPumpDriver(first.url, line=line, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
    with pytest.raises(DriverError):
        await driver.read_status()
    assert driver.connection is ConnectionState.OFFLINE
    second = PhdSimulator(setup)
    async with second.serving(f"tcp://127.0.0.1:{first.port}"):
        for _ in range(50):
            try:
                status = await driver.read_status()
                break
            except (PortUnavailable, DeviceTimeout, FrameError):
                await line.backoff_elapsed()
        else:
            pytest.fail("driver did not reconnect")
        assert status.rate_ml_h == 9
        assert driver.connection is ConnectionState.ONLINE
        await driver.close()
