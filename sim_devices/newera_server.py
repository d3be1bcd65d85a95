"""New Era simulator transport: one or more pump models behind a TCP socket or a serial port.

Usable in-process from asyncio code::

    sim = NewEraSimulator([PumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True)])
    async with sim.serving("tcp://127.0.0.1:0"):
        url = sim.url                   # socket://127.0.0.1:<port>, for the driver
        sim.pumps[0].inject(Fault.GARBLE, count=1)
        await sim.wait_until(lambda: sim.pumps[0].status is Status.STOPPED, within_s=2)

``serving`` also accepts a serial device path (one end of a socat pty pair). Several addresses
share the port like a daisy chain; a command without address goes to pump 0; a command for an
address that is not present gets no answer. Replies use the framing of the command (basic or
safe), and safe framing whenever the pump is in safe mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import serial_asyncio_fast
import structlog

from drivers.errors import FrameError
from drivers.newera.frames import (
    STX,
    Command,
    CommandStream,
    Reply,
    SafePacket,
    Status,
    command_of,
    encode_reply,
)
from sim_devices.clock import SimClock
from sim_devices.newera_pump import Fault, NewEraPumpModel, PumpSetup

log = structlog.get_logger("sim.newera")

TICK_S = 0.02  # real seconds between model updates (VOL end, safe-mode timeout)
DEFAULT_BAUD = 19200


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str = ""
    port: int = 0
    path: str = ""


def _parse_listen(url: str) -> _Endpoint:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("tcp", "socket"):
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"listen URL {url!r} needs host and port, e.g. tcp://127.0.0.1:7000")
        return _Endpoint(host=parsed.hostname, port=parsed.port)
    if parsed.scheme in ("", "serial", "file"):
        return _Endpoint(path=parsed.path or url)
    raise ValueError(f"listen URL {url!r}: use tcp://HOST:PORT or a serial device path")


class NewEraSimulator:
    """Pump models on one port, an accelerated clock and the serving transport."""

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
        self.pumps: dict[int, NewEraPumpModel] = {}
        for setup in pumps:
            if setup.address in self.pumps:
                raise ValueError(f"two simulated pumps at address {setup.address}")
            self.pumps[setup.address] = NewEraPumpModel(setup, now=self.clock.now())
        self.baudrate = baudrate
        self.emulate_wire_time = emulate_wire_time
        self.frame_errors = 0
        self.port = 0
        self.url = ""
        self._changed = asyncio.Condition()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- in-process API -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, listen: str) -> AsyncIterator[NewEraSimulator]:
        """Serve on ``tcp://host:port`` (port 0 = any free one) or a serial device path."""
        ep = _parse_listen(listen)
        ticker = asyncio.create_task(self._tick(), name="newera-sim-tick")
        server: asyncio.Server | None = None
        serial_task: asyncio.Task[None] | None = None
        try:
            if ep.path:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    loop=asyncio.get_running_loop(), url=ep.path, baudrate=self.baudrate
                )
                self._writers.add(writer)
                serial_task = asyncio.create_task(
                    self._serve_stream(reader, writer), name=f"newera-sim-serial:{ep.path}"
                )
                self.url = ep.path
            else:
                server = await asyncio.start_server(self._on_client, ep.host, ep.port)
                self.port = server.sockets[0].getsockname()[1]
                self.url = f"socket://{ep.host}:{self.port}"
            log.info("newera simulator serving", url=self.url, pumps=sorted(self.pumps))
            yield self
        finally:
            if server is not None:
                server.close()
            for writer in list(self._writers):
                writer.close()  # clients see EOF; their handlers return
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

    def now(self) -> float:
        return self.clock.now()

    # -- internals ----------------------------------------------------------------------------

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
            log.info("newera simulator client gone", error=str(exc))
        finally:
            self._conn_tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = CommandStream()
        while data := await reader.read(1024):
            stream.feed(data)
            while True:
                try:
                    frame = stream.pop()
                    if frame is None:
                        break
                    command = command_of(frame)
                except FrameError as exc:
                    self.frame_errors += 1
                    log.info("newera simulator bad frame", error=str(exc))
                    await self._answer_bad_packet(writer)
                    continue
                pump = self.pumps.get(0 if command.address is None else command.address)
                if pump is None or pump.take_fault(Fault.SILENCE, command):
                    continue
                safe_in = isinstance(frame, SafePacket)
                safe_out = safe_in or pump.safe_timeout_s > 0
                reply = pump.handle(command, self.clock.now(), safe=safe_in)
                await self._notify()
                if pump.take_fault(Fault.HANG_UP, command):
                    log.info("newera simulator hangs up", address=pump.address)
                    writer.close()  # executed; the line drops before the reply
                    return
                in_len = len(frame.serialize())
                await self._send(writer, pump, reply, command, safe=safe_out, in_len=in_len)

    async def _answer_bad_packet(self, writer: asyncio.StreamWriter) -> None:
        """A bad packet is answered ``?COM`` by the first pump in safe mode, if any."""
        for pump in sorted(self.pumps.values(), key=lambda p: p.address):
            if pump.safe_timeout_s:
                reply = Reply(pump.address, pump.status, data="?COM")
                await self._send(writer, pump, reply, None, safe=True, in_len=0)
                return

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        pump: NewEraPumpModel,
        reply: Reply,
        command: Command | None,
        *,
        safe: bool,
        in_len: int,
    ) -> None:
        if pump.take_fault(Fault.DROP_REPLY, command):
            return
        if pump.take_fault(Fault.WRONG_ADDRESS, command):
            reply = Reply((reply.address + 1) % 100, reply.status, reply.data, reply.alarm)
        wire = encode_reply(reply, safe=safe)
        if pump.take_fault(Fault.GARBLE, command):
            i = 3 if len(wire) > 4 else len(wire) // 2
            wire = wire[:i] + bytes([wire[i] ^ 0x40]) + wire[i + 1 :]
        if pump.take_fault(Fault.NOISE, command):
            i = 3 if len(wire) > 4 else len(wire) // 2
            wire = wire[:i] + bytes([wire[i] ^ 0x40]) + wire[i + 1 :] + wire
        if pump.take_fault(Fault.TRUNCATE, command):
            wire = wire[:-2]
        if pump.take_fault(Fault.OVERLONG, command):
            wire = bytes([STX]) + b"00S" + b"9" * 200
        if pump.take_fault(Fault.SLOW, command):
            await asyncio.sleep(pump.reply_delay_s)
        if self.emulate_wire_time:
            await asyncio.sleep((in_len + len(wire)) * 10 / self.baudrate)
        writer.write(wire)
        await writer.drain()


__all__ = ["Fault", "NewEraSimulator", "PumpSetup", "Status"]
