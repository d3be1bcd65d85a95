"""PHD ULTRA simulator transport: a pump chain behind a TCP socket or a serial port.

Usable in-process from asyncio code::

    sim = PhdSimulator([PumpSetup(address=0, rate_ml_h=Decimal("9"), running=True)])
    async with sim.serving("tcp://127.0.0.1:0"):
        url = sim.url                      # socket://127.0.0.1:<port>, for the driver
        sim.pumps[0].inject(Fault.GARBLE, count=1)

``serving`` also accepts a serial device path (one end of a socat pty pair). Several addresses
share the port like a pump chain; a command for an address that is not present gets no
answer. Command lines end in CR, LF or CR LF; a line longer than the cap or holding bytes that
are not printable ASCII is dropped and the next line is read afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import serial_asyncio_fast
import structlog

from drivers.errors import FrameError
from drivers.phd.grammar import Command, Prompt, Reply
from drivers.serial.lines import LineStream
from sim_devices.clock import SimClock
from sim_devices.newera_server import _parse_listen
from sim_devices.phd_pump import Fault, PhdPumpModel, PumpSetup

log = structlog.get_logger("sim.phd")

TICK_S = 0.02  # real seconds between model updates (target volume reached)
DEFAULT_BAUD = 9600


class PhdSimulator:
    """Pump models on one chain, an accelerated clock and the serving transport."""

    def __init__(
        self,
        pumps: Sequence[PumpSetup] = (PumpSetup(),),
        *,
        speed: float = 1.0,
        clock: SimClock | None = None,
        baudrate: int = DEFAULT_BAUD,
        emulate_wire_time: bool = False,
    ) -> None:
        self.clock = clock if clock is not None else SimClock(speed=speed)
        self.pumps: dict[int, PhdPumpModel] = {}
        for setup in pumps:
            if setup.address in self.pumps:
                raise ValueError(f"two simulated pumps at address {setup.address}")
            self.pumps[setup.address] = PhdPumpModel(setup, now=self.clock.now())
        self.baudrate = baudrate
        self.emulate_wire_time = emulate_wire_time
        self.frame_errors = 0
        self.port = 0
        self.url = ""
        self._changed = asyncio.Condition()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @contextlib.asynccontextmanager
    async def serving(self, listen: str) -> AsyncIterator[PhdSimulator]:
        """Serve on ``tcp://host:port`` (port 0 = any free one) or a serial device path."""
        ep = _parse_listen(listen)
        ticker = asyncio.create_task(self._tick(), name="phd-sim-tick")
        server: asyncio.Server | None = None
        serial_task: asyncio.Task[None] | None = None
        try:
            if ep.path:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    loop=asyncio.get_running_loop(), url=ep.path, baudrate=self.baudrate
                )
                self._writers.add(writer)
                serial_task = asyncio.create_task(
                    self._serve_stream(reader, writer), name=f"phd-sim-serial:{ep.path}"
                )
                self.url = ep.path
            else:
                server = await asyncio.start_server(self._on_client, ep.host, ep.port)
                self.port = server.sockets[0].getsockname()[1]
                self.url = f"socket://{ep.host}:{self.port}"
            log.info("phd simulator serving", url=self.url, pumps=sorted(self.pumps))
            yield self
        finally:
            if server is not None:
                server.close()
            for writer in list(self._writers):
                writer.close()
            if serial_task is not None:
                serial_task.cancel()
            ticker.cancel()
            await asyncio.gather(
                ticker,
                *(t for t in (serial_task,) if t),
                *self._conn_tasks,
                return_exceptions=True,
            )
            if server is not None:
                await server.wait_closed()

    async def wait_until(self, predicate: Callable[[], bool], within_s: float) -> None:
        """Wait (``within_s`` real seconds at most) until ``predicate()`` holds."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _tick(self) -> None:
        while True:
            now = self.clock.now()
            for pump in self.pumps.values():
                pump.advance(now)
            await self._notify()
            await asyncio.sleep(TICK_S)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve_stream(reader, writer)
        except ConnectionError as exc:
            log.info("phd simulator client gone", error=str(exc))
        finally:
            self._conn_tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = LineStream(cap=512, max_line=96)
        while data := await reader.read(1024):
            stream.feed(data)
            while True:
                try:
                    line = stream.pop_line()
                except FrameError as exc:
                    self.frame_errors += 1
                    log.info("phd simulator bad line", error=str(exc))
                    continue
                if line is None:
                    break
                if not await self._serve_line(line, writer):
                    return

    async def _serve_line(self, line: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one command line; False when the line must drop (hang-up fault)."""
        try:
            command = Command.parse(line)
        except (FrameError, ValueError) as exc:
            self.frame_errors += 1
            address = _address_of(line)
            pump = self.pumps.get(address)
            log.info("phd simulator bad command", error=str(exc), address=address)
            if pump is not None and not pump.take_fault(Fault.SILENCE):
                await self._send(writer, pump, pump.unknown(), None, len(line) + 1)
            return True
        pump = self.pumps.get(command.address)
        if pump is None or pump.take_fault(Fault.SILENCE, command):
            return True
        reply = pump.handle(command, self.clock.now())
        await self._notify()
        if pump.take_fault(Fault.HANG_UP, command):
            log.info("phd simulator hangs up", address=pump.address)
            writer.close()
            return False
        await self._send(writer, pump, reply, command, len(line) + 1)
        return True

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        pump: PhdPumpModel,
        reply: Reply,
        command: Command | None,
        in_len: int,
    ) -> None:
        if pump.take_fault(Fault.DROP_REPLY, command):
            return
        if pump.take_fault(Fault.WRONG_ADDRESS, command):
            reply = Reply((reply.address + 1) % 100, reply.prompt, reply.lines)
        wire = reply.encode()
        if pump.take_fault(Fault.GARBLE, command):
            wire = _corrupt(wire)
        if pump.take_fault(Fault.NOISE, command):
            wire = _corrupt(wire) + wire
        if pump.take_fault(Fault.TRUNCATE, command):
            wire = wire[: -len(reply.prompt.text)]
        if pump.take_fault(Fault.OVERLONG, command):
            wire = b"\n" + b"9" * 300
        if pump.take_fault(Fault.SLOW, command):
            await asyncio.sleep(pump.reply_delay_s)
        if self.emulate_wire_time:
            await asyncio.sleep((in_len + len(wire)) * 10 / self.baudrate)
        writer.write(wire)
        await writer.drain()


def _corrupt(wire: bytes) -> bytes:
    """Flip bit 7 of the first byte after the leading LF: no longer printable ASCII."""
    i = 1 if len(wire) > 1 else 0
    return wire[:i] + bytes([wire[i] | 0x80]) + wire[i + 1 :]


def _address_of(line: str) -> int:
    head, sep, _ = line.partition(":")
    return int(head) if sep and head.isdigit() and len(head) <= 2 else 0


__all__ = ["Fault", "PhdSimulator", "Prompt", "PumpSetup"]
