"""Daemon-level errors."""

from __future__ import annotations

from protocol.errors import InfusiondError


class ConfigError(InfusiondError):
    """Invalid configuration; the message names the offending key."""


class CommandRejected(InfusiondError):
    """A command did not pass validation or the gate; carries a machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
