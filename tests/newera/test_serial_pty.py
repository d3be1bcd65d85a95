"""Driver and simulator over a real socat pty pair (pyserial-asyncio-fast on both ends)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import serial_asyncio_fast

from drivers.base import AlarmCode, RunState, WriteOutcome
from drivers.newera import NewEraPumpDriver
from drivers.newera.frames import Status
from sim_devices.newera_pump import Fault
from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator
from tests.newera.test_raw_client import SAF0_PACKET
from tests.support.procs import PtyPair


@pytest.mark.asyncio
async def test_driver_talks_to_two_pumps_over_a_pty_pair(pty_pair: PtyPair) -> None:
    """Status, rate read-back and stop work over a serial line with two daisy-chained pumps."""
    sim = NewEraSimulator(
        [
            NewEraPumpSetup(address=0, rate_ml_h=Decimal(9), running=True, reset_alarm=False),
            NewEraPumpSetup(address=1, reset_alarm=True),
        ],
        speed=10,
    )
    async with sim.serving(str(pty_pair.a)):
        a = NewEraPumpDriver(str(pty_pair.b), 0, timeout_s=0.5)
        b = NewEraPumpDriver(str(pty_pair.b), 1, timeout_s=0.5)
        await a.connect()
        await b.connect()
        try:
            status = await a.read_status()
            assert (status.state, status.rate_ml_h) == (RunState.INFUSING, 9)
            assert (await b.read_status()).alarms == {AlarmCode.DEVICE_RESET}
            result = await a.set_rate(Decimal("0.05"))
            assert result.outcome is WriteOutcome.APPLIED
            assert sim.pumps[0].rate_ml_h == Decimal("0.05")
            assert (await a.stop()).outcome is WriteOutcome.APPLIED
            assert sim.pumps[0].status is Status.STOPPED
            assert sim.pumps[1].rate_ml_h == 0
        finally:
            await a.close()
            await b.close()


@pytest.mark.asyncio
async def test_safe_mode_over_a_pty_stops_the_pump_when_the_gateway_goes_silent(
    pty_pair: PtyPair,
) -> None:
    """SAF1 over the serial line: the pump keeps infusing while polled, stops with A?T after."""
    sim = NewEraSimulator(
        [NewEraPumpSetup(rate_ml_h=Decimal(9), running=True, reset_alarm=False)], speed=10
    )
    pump = sim.pumps[0]
    async with sim.serving(str(pty_pair.a)):
        driver = NewEraPumpDriver(str(pty_pair.b), 0, timeout_s=0.5, watchdog_s=1)
        await driver.connect()
        try:
            assert driver.safe_mode
            assert (await driver.read_status()).state is RunState.INFUSING
            await sim.wait_until(lambda: pump.status is Status.STOPPED, within_s=2.0)
            status = await driver.read_status()
            assert status.alarms == {AlarmCode.COMM_TIMEOUT}
        finally:
            await driver.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("safe", [False, True], ids=["basic", "safe-mode"])
async def test_driver_reads_the_good_reply_after_a_garbled_one_on_a_pty(
    pty_pair: PtyPair, safe: bool
) -> None:
    """The pump sends a corrupted copy of each reply (bad character or bad CRC) right before
    the good one: the driver's reply reader parses the bytes after the bad frame afresh, so
    every query and write still gets its answer."""
    sim = NewEraSimulator(
        [NewEraPumpSetup(rate_ml_h=Decimal(9), running=True, reset_alarm=False)], speed=10
    )
    pump = sim.pumps[0]
    async with sim.serving(str(pty_pair.a)):
        driver = NewEraPumpDriver(str(pty_pair.b), 0, timeout_s=0.5, watchdog_s=30 if safe else 0)
        await driver.connect()
        try:
            assert driver.safe_mode is safe
            pump.inject(Fault.NOISE)
            assert (await driver.read_status()).rate_ml_h == 9
            result = await driver.set_rate(Decimal(12))
            assert result.outcome is WriteOutcome.APPLIED
            assert "reply lost" not in result.detail
            assert pump.rate_ml_h == 12
        finally:
            pump.clear_faults()
            await driver.close()


@pytest.mark.asyncio
async def test_basic_command_after_a_corrupted_packet_is_answered_on_a_pty(
    pty_pair: PtyPair,
) -> None:
    """On the serial line: a SAF0 packet with a bad CRC and `RAT\\r` in one write -- the pump
    does not switch modes and answers RAT."""
    sim = NewEraSimulator([NewEraPumpSetup(rate_ml_h=Decimal(9), reset_alarm=False)])
    corrupted = bytearray(SAF0_PACKET)
    corrupted[3] ^= 0x01
    async with sim.serving(str(pty_pair.a)):
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=str(pty_pair.b), baudrate=19200
        )
        try:
            writer.write(bytes(corrupted) + b"RAT\r")
            async with asyncio.timeout(2):
                assert await reader.readuntil(b"\x03") == b"\x0200S9.000MH\x03"
        finally:
            writer.close()
    assert sim.frame_errors == 1
