"""One New Era serial line (or TCP socket) shared by every pump daisy-chained on it.

The transport, the line lock, the settle-after-failure rule and the backoff are the shared
:class:`drivers.serial.line.SerialLine`; this module adds New Era's framing: basic or safe-mode
frames (:mod:`drivers.newera.frames`), the addressed pump's reply only, and a reply data shape
that fits the command (``commands.toml``).
"""

from __future__ import annotations

from drivers.backoff import Backoff
from drivers.errors import FrameError
from drivers.newera.commands import check_reply
from drivers.newera.frames import (
    MAX_BASIC_REPLY,
    Command,
    Reply,
    ReplyFrame,
    ReplyStream,
    encode_command,
    reply_of,
)
from drivers.serial.line import SerialLine

DEFAULT_BAUD = 19200
DEFAULT_TIMEOUT_S = 0.5


class NewEraPort(SerialLine):
    """The shared transport of one New Era daisy chain."""

    vendor = "newera"
    max_reply = MAX_BASIC_REPLY

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(url, baudrate=baudrate, timeout_s=timeout_s, backoff=backoff)
        self.stream = ReplyStream()

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)

    def clear_input(self) -> None:
        self.stream.clear()

    def pending(self) -> bytes:
        return self.stream.pending()

    async def transact(
        self, command: Command, *, safe: bool, timeout_s: float | None = None
    ) -> Reply:
        """Send ``command`` and return the addressed pump's reply."""
        address = 0 if command.address is None else command.address

        def answer() -> Reply | None:
            frame = self.stream.pop(safe=safe)
            return None if frame is None else _answer_to(command, address, frame)

        return await self.exchange(
            encode_command(command, safe=safe),
            answer,
            f"pump {address:02d}, command {command.text()!r}",
            timeout_s=timeout_s,
        )


def _answer_to(command: Command, address: int, frame: ReplyFrame) -> Reply:
    """The reply in ``frame`` if it answers ``command`` from ``address``; else FrameError."""
    reply = reply_of(frame)
    if reply.address != address:
        raise FrameError(f"reply from address {reply.address:02d}, expected {address:02d}")
    check_reply(command, reply)
    return reply
