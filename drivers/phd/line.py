"""One PHD ULTRA pump chain (serial line or TCP socket): the shared serial line plus the
prompt-terminated reply grammar of :mod:`drivers.phd.grammar`."""

from __future__ import annotations

from drivers.backoff import Backoff
from drivers.phd.grammar import MAX_LINE, MAX_LINES, Command, Reply, ReplyReader, check_reply
from drivers.serial.line import SerialLine

DEFAULT_BAUD = 9600
DEFAULT_TIMEOUT_S = 0.5


class PhdLine(SerialLine):
    """The shared transport of one PHD ULTRA pump chain (up to 100 addresses)."""

    vendor = "phd"
    max_reply = MAX_LINE * MAX_LINES

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(url, baudrate=baudrate, timeout_s=timeout_s, backoff=backoff)
        self.reader = ReplyReader()

    def feed(self, data: bytes) -> None:
        self.reader.stream.feed(data)

    def clear_input(self) -> None:
        self.reader.clear()

    def pending(self) -> bytes:
        return self.reader.stream.pending()

    async def transact(self, command: Command, *, timeout_s: float | None = None) -> Reply:
        """Send ``command``; the reply of its pump whose data fits the command (or an error)."""

        def answer() -> Reply | None:
            reply = self.reader.pop(command.address)
            if reply is not None:
                check_reply(command, reply)
            return reply

        return await self.exchange(
            command.encode(),
            answer,
            f"pump {command.address:02d}, command {command.text()!r}",
            timeout_s=timeout_s,
        )
