"""Driver errors: what went wrong talking to a device (never policy)."""

from __future__ import annotations

from protocol.errors import InfusiondError


class DriverError(InfusiondError):
    """Any failure talking to a device. Messages name the register/command and the value."""


class DeviceTimeout(DriverError):
    """The device did not answer in time (outcome of a write is then *uncertain*)."""


class DeviceRejected(DriverError):
    """The device answered and refused the request (outcome *failed*; nothing changed)."""


class FrameError(DriverError):
    """Bytes on the wire that do not form a valid frame (bad CRC, length, garbage)."""
