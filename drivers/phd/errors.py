"""PHD ULTRA refusals: an error line (``?``, ``NA``, ``OOR``, ``Out of range`` ...) then a prompt.

Each is a :class:`drivers.errors.DeviceRejected`: the pump answered and did not execute the
command (the read-back decides whether that holds). The message names the pump address, the
command, the pump's words and their meaning (``grammar.toml`` ``[[errors]]``).
"""

from __future__ import annotations

from drivers.errors import DeviceRejected
from drivers.phd.grammar import ERRORS


class PhdRejected(DeviceRejected):
    """The pump answered a command with an error line."""

    def __init__(self, address: int, command: str, text: str) -> None:
        self.address = address
        self.command = command
        self.text = text
        self.meaning = ERRORS.get(text, "unknown error")
        super().__init__(
            f"PHD ULTRA pump {address:02d} refused {command!r}: {text!r} ({self.meaning})"
        )
