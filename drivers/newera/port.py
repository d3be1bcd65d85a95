"""One New Era serial line (or TCP socket) shared by every pump daisy-chained on it.

A port owns the transport, one :class:`asyncio.Lock` (one transaction on the wire at a time),
the capped reply stream and the reconnect backoff. Transport by URL: a serial device path
(19200 8N1 by default) or ``socket://host:port``, both opened with pyserial-asyncio-fast.

A transaction writes one command and waits for the reply from the addressed pump. Garbage, bad
frames and replies from another address are not taken as the answer: the port keeps waiting
until the timeout, then raises :class:`FrameError` (if bad bytes were seen) or
:class:`DeviceTimeout` (if nothing was). Nothing is ever re-sent here.

Replies carry no sequence number. So that a late answer to a failed transaction is not taken
as the answer to the next one, the transaction after a failure first waits for the line to be
quiet (``settle_s``, at least the wire time of a longest reply) and discards what arrived;
each reply must also have the data shape its command expects (``commands.toml``). A reply
later than the timeout plus the settle time remains indistinguishable; keep timeouts longer
than the pump's worst reply time.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

import serial_asyncio_fast
import structlog

from drivers.backoff import Backoff
from drivers.base import ConnectionState
from drivers.errors import DeviceTimeout, FrameError
from drivers.newera.commands import check_reply
from drivers.newera.errors import PortUnavailable
from drivers.newera.frames import (
    MAX_BASIC_REPLY,
    Command,
    Reply,
    ReplyFrame,
    ReplyStream,
    encode_command,
    reply_of,
)

log = structlog.get_logger("drivers.newera")

DEFAULT_BAUD = 19200
DEFAULT_TIMEOUT_S = 0.5


def normalise_url(url: str) -> str:
    """``tcp://host:port`` (the Modbus spelling) is accepted as ``socket://host:port``."""
    return "socket://" + url.removeprefix("tcp://") if url.startswith("tcp://") else url


class _Receiver(asyncio.Protocol):
    def __init__(self, port: NewEraPort) -> None:
        self._port = port

    def data_received(self, data: bytes) -> None:
        self._port.stream.feed(data)
        self._port.data_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.lost(exc)


@dataclass
class NewEraPort:
    """The shared transport of one daisy chain."""

    url: str
    baudrate: int = DEFAULT_BAUD
    timeout_s: float = DEFAULT_TIMEOUT_S
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.2, maximum_s=30.0))
    stream: ReplyStream = field(default_factory=ReplyStream)
    state: ConnectionState = ConnectionState.OFFLINE
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    data_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _transport: asyncio.Transport | None = field(default=None, repr=False)
    _retry_at: float = 0.0
    _unsettled: bool = False

    @property
    def settle_s(self) -> float:
        """Quiet time awaited after a failed transaction: two longest replies on the wire."""
        return max(0.02, 2 * MAX_BASIC_REPLY * 10 / self.baudrate)

    def __post_init__(self) -> None:
        self.url = normalise_url(self.url)

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        """Open the transport unless open; honours the reconnect backoff."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            raise PortUnavailable(f"{self.url} is offline; next reconnect attempt in {wait:.1f} s")
        self.state = ConnectionState.CONNECTING
        try:
            async with asyncio.timeout(max(2.0, self.timeout_s)):
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: _Receiver(self), self.url, baudrate=self.baudrate
                )
        except (OSError, ValueError, TimeoutError) as exc:
            self.state = ConnectionState.OFFLINE
            self._retry_at = loop.time() + self.backoff.next_delay()
            raise PortUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._transport = transport
        self.stream.clear()
        self.backoff.reset()
        self.state = ConnectionState.ONLINE
        log.info("newera port open", url=self.url, baudrate=self.baudrate)

    async def backoff_elapsed(self) -> None:
        """Wait until the next reconnect attempt is allowed."""
        await asyncio.sleep(max(0.0, self._retry_at - asyncio.get_running_loop().time()))

    def lost(self, exc: Exception | None) -> None:
        """Called by the protocol when the line closes; the next transaction reconnects."""
        if self._transport is None:
            return
        self._transport = None
        self.state = ConnectionState.OFFLINE
        self._retry_at = asyncio.get_running_loop().time() + self.backoff.next_delay()
        self.data_event.set()
        log.warning("newera port lost", url=self.url, error=str(exc) if exc else None)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self.state = ConnectionState.OFFLINE
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the transport run its close callbacks

    async def transact(
        self, command: Command, *, safe: bool, timeout_s: float | None = None
    ) -> Reply:
        """Send ``command`` and return the addressed pump's reply (see module doc)."""
        async with self.lock:
            await self.open()
            transport = self._transport
            assert transport is not None
            address = 0 if command.address is None else command.address
            if self._unsettled:
                await self._settle()
            self.stream.clear()
            self.data_event.clear()
            transport.write(encode_command(command, safe=safe))
            self._unsettled = True
            reply = await self._await_reply(command, address, safe=safe, timeout_s=timeout_s)
            self._unsettled = False
            return reply

    async def _settle(self) -> None:
        """Wait until no byte arrived for ``settle_s`` (bounded by the timeout), then flush."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while loop.time() < deadline:
            self.data_event.clear()
            try:
                async with asyncio.timeout(self.settle_s):
                    await self.data_event.wait()
            except TimeoutError:
                break
        self.stream.clear()

    async def _await_reply(
        self, command: Command, address: int, *, safe: bool, timeout_s: float | None
    ) -> Reply:
        loop = asyncio.get_running_loop()
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + limit
        problems: list[str] = []
        while True:
            try:
                frame = self.stream.pop(safe=safe)
                if frame is not None:
                    return _answer_to(command, address, frame)
            except FrameError as exc:
                problems.append(str(exc))
                continue
            if self._transport is None:
                raise DeviceTimeout(f"{self.url} closed while waiting for pump {address:02d}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.data_event.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.data_event.wait()
            except TimeoutError:
                pass
        pending = self.stream.pending()
        if pending:
            problems.append(f"truncated reply {pending[:32]!r}")
        what = f"pump {address:02d} on {self.url}, command {command.text()!r}"
        if problems:
            raise FrameError(f"no valid reply from {what}: " + "; ".join(problems[:3]))
        raise DeviceTimeout(f"no reply from {what} within {limit:.2f} s")


def _answer_to(command: Command, address: int, frame: ReplyFrame) -> Reply:
    """The reply in ``frame`` if it answers ``command`` from ``address``; else FrameError."""
    reply = reply_of(frame)
    if reply.address != address:
        raise FrameError(f"reply from address {reply.address:02d}, expected {address:02d}")
    check_reply(command, reply)
    return reply


_PORTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, NewEraPort]] = (
    weakref.WeakKeyDictionary()
)


def shared_port(
    url: str, *, baudrate: int = DEFAULT_BAUD, timeout_s: float = DEFAULT_TIMEOUT_S
) -> NewEraPort:
    """The one port object of ``url`` in the running event loop (pumps on it share it)."""
    ports = _PORTS.setdefault(asyncio.get_running_loop(), {})
    url = normalise_url(url)
    port = ports.get(url)
    if port is None:
        port = ports[url] = NewEraPort(url, baudrate=baudrate, timeout_s=timeout_s)
    return port


async def release_port(port: NewEraPort) -> None:
    """Drop one user; the last one closes the port and forgets it."""
    port.users = max(0, port.users - 1)
    if port.users == 0:
        await port.close()
        ports = _PORTS.get(asyncio.get_running_loop(), {})
        if ports.get(port.url) is port:
            del ports[port.url]
