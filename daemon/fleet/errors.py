"""Errors of the fleet collector and store."""

from __future__ import annotations

from protocol.errors import InfusiondError


class FleetError(InfusiondError):
    """A fleet collector or store failure; the message says what and where (DSN, URL, topic)."""


class DatabaseUnavailable(FleetError):
    """PostgreSQL cannot be reached (or dropped the connection); worth retrying later."""


class BrokerRefused(FleetError):
    """The broker refused this collector at its first connection: a TLS handshake it failed
    or a login it turned down. Retrying cannot help (the configuration is wrong), so the
    collector stops with this one line instead of retrying forever."""
