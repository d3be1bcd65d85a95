"""Daemon-level errors."""

from __future__ import annotations

from protocol.errors import InfusiondError


class ConfigError(InfusiondError):
    """Invalid configuration; the message names the offending key."""
