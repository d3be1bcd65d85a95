"""New Era errors: the device's error replies (``?``, ``?NA``, ``?OOR``, ``?COM``, ``?IGN``).

Each is a :class:`drivers.errors.DeviceRejected`: the pump answered and did not execute the
command. The message names the pump address, the command and the meaning of the code.
"""

from __future__ import annotations

from drivers.errors import DeviceRejected, DriverError


class NewEraRejected(DeviceRejected):
    """The pump answered a command with an error code in its data."""

    code: str = ""
    meaning: str = ""

    def __init__(self, address: int, command: str) -> None:
        self.address = address
        self.command = command
        super().__init__(
            f"New Era pump {address:02d} refused {command!r}: {self.code} ({self.meaning})"
        )


class UnknownCommand(NewEraRejected):
    code = "?"
    meaning = "command not recognised"


class NotApplicable(NewEraRejected):
    code = "?NA"
    meaning = "command not applicable in the pump's current state"


class OutOfRange(NewEraRejected):
    code = "?OOR"
    meaning = "command data out of range"


class BadPacket(NewEraRejected):
    code = "?COM"
    meaning = "invalid communications packet received (safe mode)"


class Ignored(NewEraRejected):
    code = "?IGN"
    meaning = "command ignored (a new phase started at the same time)"


REJECTIONS: dict[str, type[NewEraRejected]] = {
    cls.code: cls for cls in (UnknownCommand, NotApplicable, OutOfRange, BadPacket, Ignored)
}


class NotRepresentable(DriverError):
    """A value cannot be written in the pump's number format (at most 4 digits, one point)."""
