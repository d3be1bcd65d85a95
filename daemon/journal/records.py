"""What the journal stores and answers, as typed values: row kinds, rows, outbox items, command
claims, prune and verify reports, the journal's errors, and the row hash that chains the rows."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from daemon.base.errors import PayloadError
from daemon.base.payload import JsonObject
from daemon.base.results import KeptOutcome
from protocol.errors import InfusiondError

GENESIS_HASH = "0" * 64


class JournalKind(enum.StrEnum):
    """What a journal row records."""

    COMMAND = "command"
    VERDICT = "verdict"
    OVERRIDE = "override"
    EVENT = "event"
    ALARM = "alarm"
    STATE = "state"
    CHECKPOINT = "checkpoint"
    """Written by :meth:`Journal.prune`: with a pump id, the newest event of each type that the
    pruned rows held (so state rebuilt from the journal survives retention); without one, the
    anchor (``n`` and ``hash`` of the last pruned row) that the chain now starts from."""


class JournalError(InfusiondError):
    """The journal cannot be opened, read or written; the message names the file."""


class JournalCorrupt(JournalError):
    """The hash chain is broken; ``row`` is the first bad row number (None: the head record)."""

    def __init__(self, row: int | None, reason: str) -> None:
        where = f"row {row}" if row is not None else "chain head"
        super().__init__(f"journal broken at {where}: {reason}")
        self.row = row
        self.reason = reason


@dataclass(frozen=True)
class JournalRow:
    """One row of the chain."""

    n: int
    ts: str
    kind: str
    pump_id: str | None
    payload: JsonObject
    prev_hash: str
    hash: str

    def to_dict(self) -> JsonObject:
        """The row as ``journal export`` prints it."""
        return {
            "n": self.n,
            "ts": self.ts,
            "kind": self.kind,
            "pump_id": self.pump_id,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: JsonObject) -> JournalRow:
        """The row back from :meth:`to_dict` (as a checkpoint row carries it)."""
        return cls(
            int(data["n"]),
            str(data["ts"]),
            str(data["kind"]),
            data["pump_id"],
            data["payload"],
            str(data["prev_hash"]),
            str(data["hash"]),
        )


@dataclass(frozen=True)
class OutboxItem:
    """An event waiting for the broker's PUBACK: its ``seq``, pump, journal time and ``data``
    (the event as journaled). The MQTT side makes the topic and envelope of it when it
    publishes (daemon/mqtt/event_messages.py): the journal knows no wire format."""

    seq: int
    pump_id: str
    ts: str
    data: JsonObject


@dataclass(frozen=True)
class Hl7Item:
    """One HL7 message waiting for the EHR's ACK (MSH-10 = ``control_id``)."""

    control_id: str
    kind: str  # "dec" | "ipec" | "acm"
    payload: bytes


@dataclass(frozen=True)
class InterruptedCommand:
    """A command whose last recorded outcome is ``accepted``: it was sent to a device but no
    verified result was recorded (the process stopped in between)."""

    command_id: str
    pump_id: str | None
    outcome: KeptOutcome
    command: JsonObject | None

    @property
    def target_rate(self) -> Decimal | None:
        """The rate (mL/h) the interrupted write was sending, from its recorded verdict
        (``verdict.rate.value``); None when the verdict names no rate as a number (a start,
        stop or pause, or a row written without one)."""
        verdict = self.outcome.verdict
        return None if verdict is None else verdict.rate_ml_h


@dataclass(frozen=True)
class OpenClaim:
    """A claimed command id with no outcome recorded: the process stopped (or a journal write
    failed) between the claim and the verdict, so the command never reached a device (nothing
    is sent before its ``accepted`` is durable). ``command`` is the command as received (None:
    claimed by an older version that did not keep it)."""

    command_id: str
    pump_id: str | None
    command: JsonObject | None


@dataclass(frozen=True)
class CommandClaim:
    """Answer of :meth:`Journal.claim_command`: ``first`` is None for a new id.

    For a repeated id, ``first`` is the recorded outcome, or
    :data:`daemon.base.results.PENDING` when the first command is still being processed (no
    outcome recorded yet), and ``pump`` the pump that first command was claimed for: a pending
    first cannot say it, and a command for another pump under the id is still a conflict.
    """

    command_id: str
    first: KeptOutcome | None
    pump: str | None = None

    @property
    def is_new(self) -> bool:
        return self.first is None


@dataclass(frozen=True)
class PruneReport:
    """What one :meth:`Journal.prune` call did. ``more``: rows past retention remain (the call
    stopped at its batch size); call again."""

    deleted: int
    commands_deleted: int
    anchor: int
    more: bool


@dataclass(frozen=True)
class VerifyReport:
    """Result of walking the chain."""

    rows: int
    first_bad: int | None = None
    reason: str | None = None
    head_ok: bool = True
    #: the chain starts after row ``anchor`` (rows up to it were removed by retention)
    anchor: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None

    def raise_if_broken(self) -> None:
        if self.reason is not None:
            raise JournalCorrupt(self.first_bad, self.reason)


def row_hash(
    prev_hash: str, n: int, ts: str, kind: str, pump_id: str | None, *, payload_text: str
) -> str:
    """``sha256(prev_hash + canonical row bytes)`` as lowercase hex."""
    canonical = json.dumps(
        [n, ts, kind, pump_id, payload_text], separators=(",", ":"), ensure_ascii=False
    ).encode()
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def row_from_sql(row: tuple[Any, ...]) -> JournalRow:
    n, ts, kind, pump_id, payload, prev_hash, digest = row
    return JournalRow(n, ts, kind, pump_id, loads_payload(payload), prev_hash, digest)


def loads_command(text: object) -> JsonObject | None:
    """A stored command as received; None when not recorded (a command claimed by an older
    version whose journal row could not be found at migration)."""
    return loads_payload(text) if isinstance(text, str) else None


def loads_outcome(text: object, *, where: str) -> KeptOutcome:
    """A stored command outcome; ``PayloadError`` naming ``where`` and the field when it is not
    one (a tampered or corrupted row: nothing is guessed from it)."""
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else text
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{where}: not JSON ({exc.msg})") from None
    return KeptOutcome.from_json(value, where=where)


def loads_payload(text: object) -> JsonObject:
    """The stored payload; a tampered, unparseable one is shown raw instead of crashing."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return {"unparseable": text}
    return value if isinstance(value, dict) else {"value": value}
