"""Every status letter and alarm reply maps to a defined state; anything else is a FrameError.

A pump reporting W (withdrawing) used to crash-loop its channel with a KeyError while the state
kept saying infusing. Here the real driver reads each letter from the simulator over TCP, and
letters no New Era pump sends come from a scripted pump on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from drivers.base import AlarmCode, RunState, WriteOutcome
from drivers.errors import FrameError
from drivers.newera import NewEraPumpDriver
from drivers.newera.driver import RUN_STATES
from drivers.newera.frames import Status
from sim_devices.newera_server import NewEraSimulator
from tests.newera.conftest import FAST_TIMEOUT_S

EXPECTED = {
    Status.INFUSING: (RunState.INFUSING, frozenset()),
    Status.STOPPED: (RunState.STOPPED, frozenset()),
    Status.PAUSED: (RunState.PAUSED, frozenset()),
    Status.PAUSE_PHASE: (RunState.PAUSED, frozenset()),
    Status.USER_WAIT: (RunState.PAUSED, frozenset()),
    Status.WITHDRAWING: (RunState.ALARM, frozenset({AlarmCode.WITHDRAWING})),
    Status.PURGING: (RunState.ALARM, frozenset({AlarmCode.PURGING})),
}


def test_every_status_letter_has_a_run_state() -> None:
    """The driver's table covers the whole Status enum: no letter can raise KeyError."""
    assert set(RUN_STATES) == set(Status)
    assert set(EXPECTED) == set(Status) - {Status.ALARM}


@pytest.mark.asyncio
@pytest.mark.parametrize("letter", list(EXPECTED), ids=lambda s: s.value)
async def test_each_status_letter_reads_as_documented_poll_after_poll(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, letter: Status
) -> None:
    """I infusing; S stopped; P/T/U paused; W and X are running but not infusing: state
    alarm with 'withdrawing' / 'purging'. Repeated polls keep giving the same answer."""
    pump = sim.pumps[0]
    pump.status = letter
    if letter is Status.WITHDRAWING:
        pump.direction = "WDR"
    for _ in range(3):
        status = await pump0.read_status()
        assert (status.state, status.alarms) == EXPECTED[letter]
        assert status.rate_ml_h == 9


@pytest.mark.asyncio
async def test_a_withdrawing_pump_is_stopped_and_started_forward(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """stop on a withdrawing pump is applied only once it reads back stopped; start then
    turns it forward and the withdrawing alarm clears."""
    pump = sim.pumps[0]
    pump.direction = "WDR"
    pump.front_panel_run()
    stopped = await pump0.stop()
    assert stopped.outcome is WriteOutcome.APPLIED
    assert pump.status is Status.STOPPED
    started = await pump0.start()
    assert started.outcome is WriteOutcome.APPLIED
    assert started.readback is not None
    assert (started.readback.state, started.readback.alarms) == (RunState.INFUSING, frozenset())
    assert (pump.direction, pump.status) == ("INF", Status.INFUSING)


@dataclass
class ScriptedPump:
    """Answers each basic command line with ``replies[name]`` (or ``default``), on port 0."""

    replies: dict[bytes, bytes] = field(
        default_factory=lambda: {
            b"00DIA": b"\x0200S26.59\x03",
            b"00VER": b"\x0200SNE1000V3.928\x03",
            b"00RAT": b"\x0200S9.000MH\x03",
            b"00DIS": b"\x0200SI0.000W0.000ML\x03",
            b"00VOL": b"\x0200S0.000ML\x03",
        }
    )
    default: bytes = b"\x0200S\x03"
    override: bytes | None = None
    port: int = 0

    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                line = (await reader.readuntil(b"\r")).rstrip(b"\r")
                writer.write(self.override or self.replies.get(line, self.default))
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._answer(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.handlers.discard(task)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"socket://127.0.0.1:{self.port}"
        finally:
            server.close()
            handlers = list(self.handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"\x0200Z9.000MH\x03", "is not 'addr\\(2 digits\\) status"),
        (b"\x0200A?Q\x03", "lacks a known '\\?<letter>' alarm code"),
        (b"\x0200A\x03", "lacks a known '\\?<letter>' alarm code"),
        (b"\x0200a9.000MH\x03", "is not 'addr\\(2 digits\\) status"),
    ],
    ids=["letter-Z", "alarm-A?Q", "alarm-without-letter", "lower-case"],
)
async def test_unknown_status_or_alarm_letters_are_frame_errors_and_writes_do_not_raise(
    reply: bytes, match: str
) -> None:
    """A letter no New Era pump sends: read_status raises FrameError naming the reply (never
    KeyError), and a write is failed 'not sent' because its pre-read could not be trusted."""
    scripted = ScriptedPump()
    async with scripted.serving() as url:
        driver = NewEraPumpDriver(url, 0, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        try:
            assert (await driver.read_status()).rate_ml_h == Decimal(9)
            scripted.override = reply
            with pytest.raises(FrameError, match=match):
                await driver.read_status()
            result = await driver.set_rate(Decimal(12))
        finally:
            await driver.close()
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: pre-read failed: no valid reply")
