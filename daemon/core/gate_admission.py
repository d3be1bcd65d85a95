"""Admission of a command, decided synchronously in arrival order before any check: a known
pump, remote control enabled (``Control``), an allowed clinician, and a pump that is not busy
(a write in progress, not read yet, journal behind, settling after a restart, or too many
commands waiting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.base.results import ErrorBody, ErrorCode
from daemon.core.channel import Channel
from daemon.core.command_life import CommandLife
from daemon.mqtt.command_parse import Command
from daemon.mqtt.signing import SignaturePolicy
from drivers.base import ConnectionState

#: commands waiting for their pump's check; more are answered ``busy`` at once (flood bound)
MAX_WAITING = 8


@dataclass(frozen=True, slots=True)
class Control:
    """Remote control policy: off by default; when on, only allowlisted clinicians
    (``"*"`` admits any clinician id: the demo's simulated pumps use it)."""

    enabled: bool = False
    allowlist: frozenset[str] = frozenset()
    signatures: SignaturePolicy = field(default_factory=SignaturePolicy)


@dataclass(frozen=True)
class Doorway:
    """Reads the gate's per-pump state (shared, not copied) to admit or refuse a command."""

    channels: dict[str, Channel]
    #: pump -> the command being written there (accepted, not yet settled)
    writing: dict[str, CommandLife]
    #: pump -> commands waiting for its check
    waiting: dict[str, int]
    #: pumps whose command interrupted by a restart is not settled yet
    reconciling: set[str]

    def error(self, pump_id: str, cmd: Command, control: Control) -> ErrorBody | None:
        """Why ``cmd`` is not admitted at ``pump_id`` (an error body), or None."""
        if pump_id not in self.channels:
            return ErrorBody(ErrorCode.UNKNOWN_PUMP, f"no pump {pump_id!r} on this gateway")
        if not control.enabled:
            return ErrorBody(
                ErrorCode.CONTROL_DISABLED, "remote control is disabled on this gateway"
            )
        allowed = control.allowlist
        if "*" not in allowed and cmd.by.clinician not in allowed:
            return ErrorBody(
                ErrorCode.NOT_AUTHORIZED,
                f"by.clinician {cmd.by.clinician!r} is not allowed to command pumps here",
            )
        return self.busy(pump_id) or (
            ErrorBody(ErrorCode.BUSY, f"pump {pump_id}: too many commands waiting; retry later")
            if self.waiting.get(pump_id, 0) >= MAX_WAITING
            else None
        )

    def busy(self, pump_id: str) -> ErrorBody | None:
        writing = self.writing.get(pump_id)
        if writing is not None:
            return ErrorBody(
                ErrorCode.BUSY,
                f"pump {pump_id} is executing command {writing.command_id!r}; retry when it "
                "has ended",
            )
        channel = self.channels[pump_id]
        if channel.status is None or channel.connection is not ConnectionState.ONLINE:
            return ErrorBody(
                ErrorCode.BUSY,
                f"pump {pump_id} is {channel.connection.value}: its state has not been read "
                "since the gateway started or it stopped answering; nothing was sent",
            )
        if channel.journal_behind:
            return ErrorBody(
                ErrorCode.BUSY,
                f"pump {pump_id}: its latest reading is not journaled yet (journal unavailable); "
                "nothing is checked against an older state",
            )
        if pump_id in self.reconciling:
            return ErrorBody(
                ErrorCode.BUSY,
                f"pump {pump_id} is settling a command interrupted by a restart; retry shortly",
            )
        return None
