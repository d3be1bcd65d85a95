"""One physical serial line (or TCP socket) shared by every pump daisy-chained on it.

A line owns the transport, one :class:`asyncio.Lock` (one transaction on the wire at a time),
the capped receive buffer of its vendor's framing and the reconnect backoff. Transport by URL:
a serial device path or ``socket://host:port`` (``tcp://`` is accepted as a synonym), both
opened with pyserial-asyncio-fast.

A transaction writes one command and waits until the vendor's parser yields the answer of the
addressed pump. Garbage, bad frames and replies from another address are not the answer: they
are noted and the line keeps waiting until the timeout, then raises :class:`FrameError` (bad
bytes were seen) or :class:`DeviceTimeout` (nothing was). Nothing is ever re-sent here.

Replies carry no sequence number. So that a late answer to a failed transaction is not taken
as the answer to the next one, the transaction after a failure first waits for the line to be
quiet (``settle_s``: the wire time of two longest replies) and discards what arrived.
"""

from __future__ import annotations

import abc
import asyncio
import weakref
from collections.abc import Callable
from typing import ClassVar, TypeVar

import serial_asyncio_fast
import structlog

from drivers.backoff import Backoff
from drivers.base import ConnectionState
from drivers.errors import DeviceTimeout, DriverError, FrameError

log = structlog.get_logger("drivers.serial")

T = TypeVar("T")
L = TypeVar("L", bound="SerialLine")


class PortUnavailable(DriverError):
    """The serial line or socket is not open (reconnect backing off): nothing was sent."""


def normalise_url(url: str) -> str:
    """``tcp://host:port`` (the Modbus spelling) is accepted as ``socket://host:port``."""
    return "socket://" + url.removeprefix("tcp://") if url.startswith("tcp://") else url


class _Receiver(asyncio.Protocol):
    def __init__(self, line: SerialLine) -> None:
        self._line = line

    def data_received(self, data: bytes) -> None:
        self._line.feed(data)
        self._line.data_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._line.lost(exc)


class SerialLine(abc.ABC):
    """The shared transport of one chain; a vendor subclass supplies the framing."""

    #: vendor name, for logs and messages
    vendor: ClassVar[str] = "serial"
    #: longest reply in bytes (sizes the settle time)
    max_reply: ClassVar[int] = 64

    def __init__(
        self, url: str, *, baudrate: int, timeout_s: float, backoff: Backoff | None = None
    ) -> None:
        self.url = normalise_url(url)
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.backoff = backoff if backoff is not None else Backoff(initial_s=0.2, maximum_s=30.0)
        self.state = ConnectionState.OFFLINE
        self.users = 0
        self.lock = asyncio.Lock()
        self.data_event = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._retry_at = 0.0
        self._unsettled = False

    # -- framing, supplied by the vendor --------------------------------------------------------

    @abc.abstractmethod
    def feed(self, data: bytes) -> None:
        """Bytes received from the line."""

    @abc.abstractmethod
    def clear_input(self) -> None:
        """Forget every byte received so far."""

    @abc.abstractmethod
    def pending(self) -> bytes:
        """Bytes received and not yet parsed (for messages)."""

    # -- transport ------------------------------------------------------------------------------

    @property
    def settle_s(self) -> float:
        """Quiet time awaited after a failed transaction: two longest replies on the wire."""
        return max(0.02, 2 * self.max_reply * 10 / self.baudrate)

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
        self.clear_input()
        self.backoff.reset()
        self.state = ConnectionState.ONLINE
        log.info("serial line open", vendor=self.vendor, url=self.url, baudrate=self.baudrate)

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
        log.warning(
            "serial line lost", vendor=self.vendor, url=self.url, error=str(exc) if exc else None
        )

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self.state = ConnectionState.OFFLINE
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the transport run its close callbacks

    async def exchange(
        self,
        wire: bytes,
        answer: Callable[[], T | None],
        what: str,
        *,
        timeout_s: float | None = None,
    ) -> T:
        """Write ``wire`` and return the first value ``answer()`` yields (see module doc).

        ``answer`` parses the receive buffer: it returns None while more bytes are needed and
        raises FrameError for each bad stretch it discards (then it is called again).
        """
        async with self.lock:
            await self.open()
            transport = self._transport
            assert transport is not None
            if self._unsettled:
                await self._settle()
            self.clear_input()
            self.data_event.clear()
            transport.write(wire)
            self._unsettled = True
            result = await self._await(answer, what, timeout_s)
            self._unsettled = False
            return result

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
        self.clear_input()

    async def _await(self, answer: Callable[[], T | None], what: str, timeout_s: float | None) -> T:
        loop = asyncio.get_running_loop()
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + limit
        problems: list[str] = []
        while True:
            try:
                result = answer()
                if result is not None:
                    return result
            except FrameError as exc:
                problems.append(str(exc))
                continue
            if self._transport is None:
                raise DeviceTimeout(f"{self.url} closed while waiting for {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.data_event.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.data_event.wait()
            except TimeoutError:
                pass
        pending = self.pending()
        if pending:
            problems.append(f"truncated reply {pending[:32]!r}")
        where = f"{what} on {self.url}"
        if problems:
            raise FrameError(f"no valid reply from {where}: " + "; ".join(problems[:3]))
        raise DeviceTimeout(f"no reply from {where} within {limit:.2f} s")


_LINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SerialLine]] = (
    weakref.WeakKeyDictionary()
)


def shared_line(kind: type[L], url: str, *, baudrate: int, timeout_s: float) -> L:
    """The one line object of ``url`` in the running event loop (pumps on it share it).

    One physical line speaks one vendor's protocol: asking for ``url`` with another vendor's
    line class is a DriverError naming both.
    """
    lines = _LINES.setdefault(asyncio.get_running_loop(), {})
    url = normalise_url(url)
    line = lines.get(url)
    if line is None:
        created = kind(url, baudrate=baudrate, timeout_s=timeout_s)
        lines[url] = created
        return created
    if not isinstance(line, kind):
        raise DriverError(f"{url} is already a {line.vendor} line, not a {kind.vendor} one")
    return line


async def release_line(line: SerialLine) -> None:
    """Drop one user; the last one closes the line and forgets it."""
    line.users = max(0, line.users - 1)
    if line.users == 0:
        await line.close()
        lines = _LINES.get(asyncio.get_running_loop(), {})
        if lines.get(line.url) is line:
            del lines[line.url]
