"""Serving transport shared by the serial pump simulators (New Era, PHD ULTRA).

A :class:`SerialSimulator` holds the pump models of one port (a daisy chain: one model per
address), an accelerated clock and the transport: a TCP listener (``tcp://host:port``, port 0 =
any free one) or one end of a serial port (a socat pty pair). Each vendor subclass parses its own
wire format in :meth:`SerialSimulator._serve_stream` and builds its own replies.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, Self, TypeVar

import serial_asyncio_fast
import structlog

from sim_devices.clock import SimClock

log = structlog.get_logger("sim.serial")

TICK_S = 0.02  # real seconds between model updates (end of a target volume, timeouts)


class PumpModel(Protocol):
    """What the serving loop needs of a vendor's pump model."""

    @property
    def address(self) -> int: ...

    def advance(self, now: float) -> None: ...


class HasAddress(Protocol):
    @property
    def address(self) -> int: ...


SetupT = TypeVar("SetupT", bound=HasAddress)
ModelT = TypeVar("ModelT", bound=PumpModel)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to serve: ``host``/``port`` for TCP, or ``path`` for a serial device."""

    host: str = ""
    port: int = 0
    path: str = ""


def parse_listen(url: str) -> Endpoint:
    """``tcp://HOST:PORT`` (or ``socket://``), or a serial device path (bare, serial:, file:)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("tcp", "socket"):
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"listen URL {url!r} needs host and port, e.g. tcp://127.0.0.1:7000")
        return Endpoint(host=parsed.hostname, port=parsed.port)
    if parsed.scheme in ("", "serial", "file"):
        return Endpoint(path=parsed.path or url)
    raise ValueError(f"listen URL {url!r}: use tcp://HOST:PORT or a serial device path")


class SerialSimulator(abc.ABC, Generic[SetupT, ModelT]):
    """Pump models on one port, the simulated clock and the serving loop of a serial vendor."""

    vendor: ClassVar[str]
    default_baud: ClassVar[int]

    def __init__(
        self,
        pumps: Sequence[SetupT] | None = None,
        *,
        speed: float = 1.0,
        clock: SimClock | None = None,
        baudrate: int | None = None,
        emulate_wire_time: bool = False,
    ) -> None:
        """``pumps`` (default: one pump of the default setup) on a ``speed``-times clock."""
        self.clock = clock if clock is not None else SimClock(speed=speed)
        self.pumps: dict[int, ModelT] = {}
        for setup in self._default_setups() if pumps is None else pumps:
            if setup.address in self.pumps:
                raise ValueError(f"two simulated pumps at address {setup.address}")
            self.pumps[setup.address] = self._new_pump(setup, self.clock.now())
        self.baudrate = self.default_baud if baudrate is None else baudrate
        self.emulate_wire_time = emulate_wire_time
        self.frame_errors = 0
        self.port = 0
        self.url = ""
        self._changed = asyncio.Condition()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- in-process API -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, listen: str) -> AsyncIterator[Self]:
        """Serve on ``tcp://host:port`` (port 0 = any free one) or a serial device path."""
        ep = parse_listen(listen)
        ticker = asyncio.create_task(self._tick(), name=f"{self.vendor}-sim-tick")
        server: asyncio.Server | None = None
        serial_task: asyncio.Task[None] | None = None
        try:
            if ep.path:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    loop=asyncio.get_running_loop(), url=ep.path, baudrate=self.baudrate
                )
                self._writers.add(writer)
                serial_task = asyncio.create_task(
                    self._serve_stream(reader, writer), name=f"{self.vendor}-sim-serial:{ep.path}"
                )
                self.url = ep.path
            else:
                server = await asyncio.start_server(self._on_client, ep.host, ep.port)
                self.port = server.sockets[0].getsockname()[1]
                self.url = f"socket://{ep.host}:{self.port}"
            log.info(
                "simulator serving", vendor=self.vendor, url=self.url, pumps=sorted(self.pumps)
            )
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

    # -- for the vendor subclasses ------------------------------------------------------------

    @abc.abstractmethod
    def _default_setups(self) -> Sequence[SetupT]:
        """The pumps simulated when none are given."""

    @abc.abstractmethod
    def _new_pump(self, setup: SetupT, now: float) -> ModelT:
        """The model of a pump set up as ``setup``, powered on at simulated time ``now``."""

    @abc.abstractmethod
    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read commands from ``reader`` and answer them on ``writer`` until EOF."""

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _write_reply(
        self, writer: asyncio.StreamWriter, wire: bytes, *, delay_s: float | None, in_len: int
    ) -> None:
        """Send ``wire`` after ``delay_s`` (a slow-reply fault) and, if emulated, the wire time."""
        if delay_s is not None:
            await asyncio.sleep(delay_s)
        if self.emulate_wire_time:
            await asyncio.sleep((in_len + len(wire)) * 10 / self.baudrate)
        writer.write(wire)
        await writer.drain()

    # -- internals ----------------------------------------------------------------------------

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
            log.info("simulator client gone", vendor=self.vendor, error=str(exc))
        finally:
            self._conn_tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


__all__ = ["Endpoint", "SerialSimulator", "parse_listen"]
