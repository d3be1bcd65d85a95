"""Driver and simulator over a real socat pty pair, and ``infusiond sim phd`` as a process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from decimal import Decimal

import pytest

from drivers.base import AlarmCode, RunState, WriteOutcome
from drivers.phd import PhdPumpDriver
from drivers.phd.grammar import Prompt
from sim_devices.phd_pump import Fault
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator
from tests.support.procs import PtyPair, wait_for_line


@pytest.mark.asyncio
async def test_driver_talks_to_a_chain_of_three_pumps_over_a_pty_pair(pty_pair: PtyPair) -> None:
    """Status, rate read-back, start and stop reach the right pump on a serial chain."""
    sim = PhdSimulator(
        [
            PhdPumpSetup(0, rate_ml_h=Decimal(9), running=True),
            PhdPumpSetup(1, rate_ml_h=Decimal(2)),
            PhdPumpSetup(99, diameter_mm=Decimal("4.699")),
        ],
        speed=10,
    )
    async with sim.serving(str(pty_pair.a)):
        drivers = [PhdPumpDriver(str(pty_pair.b), address, timeout_s=0.5) for address in (0, 1, 99)]
        for driver in drivers:
            await driver.connect()
        a, b, c = drivers
        try:
            status = await a.read_status()
            assert (status.state, status.rate_ml_h) == (RunState.INFUSING, 9)
            assert c.capabilities.max_rate_ml_h == Decimal("198.53")  # BD 1 mL syringe
            assert (await a.set_rate(Decimal("0.05"))).outcome is WriteOutcome.APPLIED
            assert (await b.start()).outcome is WriteOutcome.APPLIED
            assert (await a.stop()).outcome is WriteOutcome.APPLIED
            assert sim.pumps[0].rate_ml_h == Decimal("0.05")
            assert (sim.pumps[0].prompt, sim.pumps[1].prompt) == (Prompt.IDLE, Prompt.INFUSING)
            assert sim.pumps[99].commands_seen == 3  # address, diameter, ver at connect
        finally:
            for driver in drivers:
                await driver.close()


@pytest.mark.asyncio
async def test_faults_over_a_pty_garbled_reply_and_stall(pty_pair: PtyPair) -> None:
    """A garbled reply to irate is recovered by the read-back; a stall reads as an alarm."""
    sim = PhdSimulator([PhdPumpSetup(rate_ml_h=Decimal(9), running=True)], speed=10)
    async with sim.serving(str(pty_pair.a)):
        driver = PhdPumpDriver(str(pty_pair.b), 0, timeout_s=0.5)
        await driver.connect()
        try:
            sim.pumps[0].inject(Fault.GARBLE, count=1, on="irate")
            result = await driver.set_rate(Decimal(12))
            assert result.outcome is WriteOutcome.APPLIED
            assert "reply lost" in result.detail
            sim.pumps[0].stall()
            assert (await driver.read_status()).alarms == {AlarmCode.STALLED}
        finally:
            await driver.close()


def test_sim_phd_process_serves_a_chain_with_start_faults() -> None:
    """`infusiond sim phd --pumps 2 --faults stall@1` on port 0: pump 0 answers its rate, pump
    1 answers with the stall prompt."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sim",
            "phd",
            "--listen",
            "tcp://127.0.0.1:0",
            "--rate",
            "9",
            "--running",
            "--pumps",
            "2",
            "--faults",
            "stall@1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        seen = wait_for_line(proc, b"serving", timeout=10, stream=proc.stdout)
        if b"\n" not in seen[seen.index(b"serving") :]:
            seen += wait_for_line(proc, b"\n", timeout=10, stream=proc.stdout)
        found = re.search(rb"socket://127\.0\.0\.1:(\d+)", seen)
        assert found is not None, seen
        port = int(found.group(1))

        async def talk() -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"irat\r")
                async with asyncio.timeout(5):
                    rate = await reader.readuntil(b">")
                writer.write(b"1:stat\r")
                async with asyncio.timeout(5):
                    stall = await reader.readuntil(b"1*")
                return rate, stall
            finally:
                writer.close()
                await writer.wait_closed()

        rate, stall = asyncio.run(talk())
        assert rate == b"\n9 ml/hr\r\n>"
        assert re.fullmatch(rb"\n0 \d+ \d+ i\.S\.I\r\n1\*", stall), stall  # motor stands
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
