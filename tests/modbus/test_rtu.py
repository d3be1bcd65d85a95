"""The driver over Modbus RTU on a real socat pty pair; two pumps share one bus and one lock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from decimal import Decimal

import pytest

from drivers.base import AlarmCode, RunState, WriteOutcome
from drivers.errors import DeviceTimeout
from drivers.modbus import BusRegistry, ModbusPumpDriver
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import demo_pump, fast_backoff
from tests.support.procs import PtyPair, wait_for_line

WRITE_MULTIPLE = 16


@pytest.mark.asyncio
async def test_two_pumps_on_one_rtu_bus_share_a_client_and_serialise_commands(
    pty_pair: PtyPair,
) -> None:
    """Concurrent set_rate on units 1 and 2 both apply, each as one uninterrupted
    read-write-read transaction on the wire (the bus lock serialises them)."""
    sim = ModbusPumpSimulator([demo_pump(1), demo_pump(2)])
    registry = BusRegistry()
    async with sim.serving(str(pty_pair.a)):
        one = ModbusPumpDriver(str(pty_pair.b), 1, registry=registry, timeout_s=1.0)
        two = ModbusPumpDriver(str(pty_pair.b), 2, registry=registry, timeout_s=1.0)
        await one.connect()
        await two.connect()
        try:
            assert len(registry) == 1  # one client for the bus
            sim.requests.clear()
            r1, r2 = await asyncio.gather(
                one.set_rate(Decimal("40.00")), two.set_rate(Decimal("70.00"))
            )
            assert (r1.outcome, r2.outcome) == (WriteOutcome.APPLIED, WriteOutcome.APPLIED)
            assert sim.pump(1).rate == Decimal("40.00")
            assert sim.pump(2).rate == Decimal("70.00")
            units = [r.unit for r in sim.requests]
            # each transaction (pre-read, write, read-back...) is contiguous on the wire
            first = units[0]
            switch = units.index(3 - first)
            assert set(units[:switch]) == {first}
            assert set(units[switch:]) == {3 - first}
            for unit in (1, 2):
                writes = [
                    r for r in sim.requests if r.unit == unit and r.function_code == WRITE_MULTIPLE
                ]
                assert [(w.address, w.count) for w in writes] == [(20, 4)]  # sent exactly once
        finally:
            await one.close()
            await two.close()
        assert len(registry) == 0


@pytest.mark.asyncio
async def test_rtu_status_faults_and_silent_units(pty_pair: PtyPair) -> None:
    """Status and alarms decode over RTU; a unit id with no pump behind it stays silent."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    registry = BusRegistry()
    async with sim.serving(str(pty_pair.a)):
        driver = ModbusPumpDriver(str(pty_pair.b), 1, registry=registry, timeout_s=0.5)
        ghost = ModbusPumpDriver(
            str(pty_pair.b), 9, registry=registry, timeout_s=0.3, backoff=fast_backoff()
        )
        await driver.connect()
        try:
            status = await driver.read_status()
            assert status.state is RunState.INFUSING
            assert status.rate_ml_h == Decimal("52.50")
            sim.inject("air_in_line", unit=1)
            assert (await driver.read_status()).alarms == {AlarmCode.AIR_IN_LINE}
            with pytest.raises(DeviceTimeout):
                await ghost.connect()
            # the bus still works for the pump that exists
            assert (await driver.read_status()).state is RunState.ALARM
        finally:
            await ghost.close()
            await driver.close()


@pytest.mark.asyncio
async def test_late_rtu_answer_is_not_taken_for_the_next_request(pty_pair: PtyPair) -> None:
    """RTU has no transaction id: after a timeout the driver lets the late answer pass, so
    the next request (another register block) gets its own answer, not the stale one."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with sim.serving(str(pty_pair.a)):
        driver = ModbusPumpDriver(str(pty_pair.b), 1, registry=BusRegistry(), timeout_s=0.2)
        await driver.connect()
        try:
            sim.inject("slow_answer", 0.3, unit=1)
            with pytest.raises(DeviceTimeout):
                await driver.read_status()
            sim.clear("slow_answer", unit=1)
            assert (await driver.identity()).model == "SIM-GP1"
            assert (await driver.read_status()).state is RunState.INFUSING
        finally:
            await driver.close()


@pytest.mark.asyncio
async def test_rtu_framing_over_a_socket_url() -> None:
    """`socket://host:port` (the pyserial URL form) carries RTU frames over TCP, both ways."""
    sim = ModbusPumpSimulator([demo_pump(3)])
    async with sim.serving("socket://127.0.0.1:0") as served:
        assert served.url.startswith("socket://127.0.0.1:")
        driver = ModbusPumpDriver(served.url, 3, registry=BusRegistry(), timeout_s=0.5)
        await driver.connect()
        try:
            assert (await driver.set_rate(Decimal("12.34"))).outcome is WriteOutcome.APPLIED
            assert sim.pump(3).rate == Decimal("12.34")
        finally:
            await driver.close()


@pytest.mark.asyncio
async def test_cli_simulator_on_a_serial_path(pty_pair: PtyPair) -> None:
    """`infusiond sim modbus --serial PATH --pumps 2 --faults 2:occlusion` serves RTU."""
    cmd = [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--serial", str(pty_pair.a)]
    opts = ["--pumps", "2", "--status", "infusing", "--rate", "52.5", "--faults", "2:occlusion"]
    proc = subprocess.Popen([*cmd, *opts], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    registry = BusRegistry()
    try:
        wait_for_line(proc, b"modbus simulator serving", 20)
        one = ModbusPumpDriver(str(pty_pair.b), 1, registry=registry, timeout_s=1.0)
        two = ModbusPumpDriver(str(pty_pair.b), 2, registry=registry, timeout_s=1.0)
        await one.connect()
        await two.connect()
        try:
            assert (await one.read_status()).state is RunState.INFUSING
            status = await two.read_status()
            assert status.state is RunState.ALARM
            assert status.alarms == {AlarmCode.OCCLUSION}
        finally:
            await one.close()
            await two.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", "but no complete valid answer frame"),
        ("wrong_unit", "the answer came from unit id 2"),
        ("no_answer", "no answer within 0.3 s"),
    ],
)
async def test_rtu_pre_read_fault_sends_nothing_and_the_line_recovers(
    pty_pair: PtyPair, fault: str, reason: str
) -> None:
    """Over RTU too: a pre-read answered with bad-CRC garbage, by another unit id (valid CRC)
    or not at all -> ``failed`` "not sent" naming it, no write on the line; once the pump
    behaves, the next command on the same line is applied."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with sim.serving(str(pty_pair.a)):
        driver = ModbusPumpDriver(str(pty_pair.b), 1, registry=BusRegistry(), timeout_s=0.3)
        await driver.connect()
        try:
            sim.inject(fault, unit=1)
            result = await driver.set_rate(Decimal("40.00"))
            assert result.outcome is WriteOutcome.FAILED
            assert result.detail.startswith("not sent: apply_rate")
            assert reason in result.detail
            assert sim.pump(1).writes == 0
            sim.clear(fault, unit=1)
            assert (await driver.set_rate(Decimal("40.00"))).outcome is WriteOutcome.APPLIED
            assert sim.pump(1).writes == 1
        finally:
            await driver.close()
