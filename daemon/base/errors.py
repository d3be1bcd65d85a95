"""Daemon-level errors."""

from __future__ import annotations

from protocol.errors import InfusiondError


class ConfigError(InfusiondError):
    """Invalid configuration; the message names the offending key."""


class PayloadError(InfusiondError, ValueError):
    """A stored or received JSON payload (a journal row, an MQTT message) does not have the
    shape of the typed value it should become; the message names the field. It is a
    ``ValueError`` too, so a reader that rejects any malformed row catches one class."""
