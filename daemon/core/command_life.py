"""An accepted command's life as typed values: its phase (accepted, then one end), the deadline
it must end by, the fingerprint that tells a retry from another command under the same id, and
the stored outcome as a duplicate is told it."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, replace

from daemon.base.payload import JsonObject
from daemon.base.results import ErrorBody, ErrorCode, KeptOutcome, Phase

#: command fields that do not make it another command (a retry; a confirmation, which another
#: clinician may give)
_NOT_IN_FINGERPRINT = frozenset({"confirm", "issued_at", "ttl_s", "signature", "schema", "by"})


class CommandPhase(enum.Enum):
    """Where an accepted command is in its life (the result phases of the contract)."""

    ACCEPTED = "accepted"
    APPLIED = "applied"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


#: the only ends of an accepted command
_ENDS = frozenset({CommandPhase.APPLIED, CommandPhase.FAILED, CommandPhase.UNCERTAIN})


@dataclass(frozen=True, slots=True)
class CommandLife:
    """One accepted command between ``accepted`` and its end, with the deadline it must end by
    (loop time). It holds its pump: a command arriving meanwhile is answered ``busy``."""

    command_id: str
    deadline: float
    phase: CommandPhase = CommandPhase.ACCEPTED

    def end(self, phase: Phase) -> CommandLife:
        """The command ended in ``phase`` (a result phase); anything but an end is a bug."""
        ended = next((p for p in _ENDS if p.value == phase.value), None)
        if self.phase is not CommandPhase.ACCEPTED or ended is None:
            raise ValueError(f"command {self.command_id}: {self.phase.value} -> {phase.value}")
        return replace(self, phase=ended)


def fingerprint(command: JsonObject) -> str:
    """What makes two commands with one id the same command (payload, not delivery): a hash of
    the command's JSON as received (journaled with it, so a restart compares the same text)."""
    kept = {k: v for k, v in command.items() if k not in _NOT_IN_FINGERPRINT}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def id_conflict(pump_id: str, command_id: str, fp: str, first: KeptOutcome) -> str | None:
    """Why a known id cannot be this command (another payload or pump: ``id_conflict``), or
    None when it is the same command again. ``first`` is the id's stored outcome."""
    first_pump = first.pump
    first_fp = first.fingerprint
    other_pump = first_pump is not None and first_pump != pump_id
    other_payload = bool(first_fp) and first_fp != fp
    if not (other_pump or other_payload):
        return None
    what = f"pump {first_pump}" if other_pump else "another payload"
    return (
        f"id: {command_id!r} was already used for {what} (first command on pump "
        f"{first_pump}, phase {first.phase}); ids are unique per gateway"
    )


def no_outcome_yet(command_id: str, pump_id: str, claimed_pump: str | None) -> ErrorBody:
    """Why a repeat of an id claimed with no outcome recorded yet is refused: its first command
    is still being checked (on another pump, or as a hospital order, or its journal write just
    failed). Nothing is known to tell as its ``first``, so the repeat is not a ``duplicate``:
    ``id_conflict`` when the id was claimed for another pump, else ``busy`` (nothing executed:
    sent again once the first has ended, it is told that first outcome)."""
    if claimed_pump is not None and claimed_pump != pump_id:
        return ErrorBody(
            ErrorCode.ID_CONFLICT,
            f"id: {command_id!r} was already used for pump {claimed_pump}; ids are unique per "
            "gateway",
        )
    return ErrorBody(
        ErrorCode.BUSY,
        f"command {command_id!r} is still being processed and has no outcome yet; send it "
        "again to be told its outcome",
    )
