"""A command's results (``pump.command.result`` data, docs/schemas/
infusiond.pump.command.result-1.json) and the outcome kept for its id, as typed values.

The gate, the writer and the restart reconciler build a :class:`CommandResult` with its named
constructors and hand it on as is; it becomes JSON (:meth:`CommandResult.to_json`) only where it
is published or journaled. The journal keeps, for each command id, a :class:`KeptOutcome`
(what a duplicate is told, plus what a restart needs to settle or repeat the command) and
reads it back with :meth:`KeptOutcome.from_json`, which names the field of a malformed row.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from daemon.base import payload
from daemon.base.errors import PayloadError
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity, optional_json, optional_quantity
from daemon.base.timefmt import format_ts, parse_ts


class ErrorCode(enum.StrEnum):
    """The ``error.code`` values of the contract."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_PUMP = "unknown_pump"
    EXPIRED = "expired"
    CONTROL_DISABLED = "control_disabled"
    NOT_AUTHORIZED = "not_authorized"
    BUSY = "busy"
    TOO_LARGE = "too_large"
    RETAINED = "retained"
    BAD_SIGNATURE = "bad_signature"
    ID_CONFLICT = "id_conflict"  # a known id with another payload or pump
    INTERNAL_ERROR = "internal_error"  # a gateway fault: the command was not executed
    JOURNAL_UNAVAILABLE = "journal_unavailable"  # the gateway cannot record: it refuses
    # the codes of a write's end (failed, uncertain), never of a rejection
    NOT_SENT = "not_sent"  # failed: the driver sent nothing
    DEVICE_REJECTED = "device_rejected"  # failed: the device refused, verified unchanged
    DEVICE_TIMEOUT = "device_timeout"  # uncertain: no verified answer
    INTERRUPTED = "interrupted"  # settled after a restart interrupted the write


class Phase(enum.StrEnum):
    """Result phases, in lifecycle order, plus ``duplicate``."""

    REJECTED = "rejected"
    NEEDS_CONFIRMATION = "needs_confirmation"
    ACCEPTED = "accepted"
    APPLIED = "applied"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    DUPLICATE = "duplicate"


class CommandSource(enum.StrEnum):
    """Where a command came from when not from MQTT (``source``)."""

    PIV = "piv"  # a hospital order (IHE PCD PIV, HL7 RGV^O15)


# -- reading JSON ------------------------------------------------------------------------------


# -- writing JSON ------------------------------------------------------------------------------


def _json(part: ErrorBody | VerdictJson | Readback | FirstOutcome | DeviceBefore | None) -> Any:
    return None if part is None else part.to_json()


def _present(**fields: Any) -> JsonObject:
    """The fields that are there: an optional field is absent from the JSON, never ``null``."""
    return {name: value for name, value in fields.items() if value is not None}


# -- the parts of a result ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """``{"code", "message"}``: why a command was refused or how its write ended."""

    code: ErrorCode
    message: str

    def to_json(self) -> JsonObject:
        return {"code": self.code.value, "message": self.message}

    @classmethod
    def from_json(cls, data: object, *, where: str = "error") -> ErrorBody:
        body = payload.as_object(data, where)
        return cls(
            payload.choice(ErrorCode, body, "code", where), payload.text(body, "message", where)
        )


@dataclass(frozen=True, slots=True)
class VerdictJson:
    """A protocol verdict as JSON (``protocol.verdict.Verdict.to_dict()``), held whole.

    It is journaled with the command and told verbatim to every duplicate of its id, possibly
    by a later version whose verdict has other keys (the contract allows extra keys): so it is
    kept as the JSON the check produced, never re-modelled here; only the few readings the
    daemon needs are offered, each tolerant of a verdict that does not have them."""

    data: JsonObject

    def to_json(self) -> JsonObject:
        return self.data

    @classmethod
    def from_json(cls, data: object, *, where: str = "verdict") -> VerdictJson:
        return cls(dict(payload.as_object(data, where)))

    @property
    def rate_ml_h(self) -> Decimal | None:
        """The rate (mL/h) the verdict computed (``rate.value``), exactly as recorded; None
        when it names none as a number (a start, stop or pause, or an older row)."""
        rate = self.data.get("rate")
        value = rate.get("value") if isinstance(rate, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return Decimal(str(value))

    def rules(self, severity: str) -> list[str]:
        """The rule ids of the findings of ``severity``."""
        findings = self.data.get("findings")
        return [
            str(f.get("rule"))
            for f in (findings if isinstance(findings, list) else [])
            if isinstance(f, Mapping) and f.get("severity") == severity
        ]


@dataclass(frozen=True, slots=True)
class Readback:
    """What the device reports after a write: its run state, rate, and the dose that rate
    gives under the running program (None when the program has no dose for it)."""

    status: str
    rate: Quantity
    dose: Quantity | None

    def to_json(self) -> JsonObject:
        return {
            "status": self.status,
            "rate": self.rate.to_json(),
            "dose": optional_json(self.dose),
        }

    @classmethod
    def from_json(cls, data: object, *, where: str = "readback") -> Readback:
        body = payload.as_object(data, where)
        return cls(
            payload.text(body, "status", where),
            Quantity.from_json(body.get("rate"), where=f"{where}.rate"),
            optional_quantity(body.get("dose"), where=f"{where}.dose"),
        )


def _optional_readback(data: object, where: str) -> Readback | None:
    # an empty object: a read-back of nothing, as an older version could record it
    return None if data is None or data == {} else Readback.from_json(data, where=where)


@dataclass(frozen=True, slots=True)
class FirstOutcome:
    """What a duplicate of an id is told (``first``): the first command's latest phase, its
    verdict or error, and its pump. ``phase`` None: nothing is recorded yet (the first command
    is still being checked, or a crash came first); never told (the contract's ``first``
    requires a phase: see :meth:`CommandResult.duplicate`)."""

    phase: Phase | None
    verdict: VerdictJson | None = None
    error: ErrorBody | None = None
    pump: str | None = None

    def to_json(self) -> JsonObject:
        return _present(
            phase=None if self.phase is None else self.phase.value,
            verdict=_json(self.verdict),
            error=_json(self.error),
            pump=self.pump,
        )

    @classmethod
    def from_json(cls, data: object, *, where: str = "first") -> FirstOutcome:
        body = payload.as_object(data, where)
        verdict, error = body.get("verdict"), body.get("error")
        return cls(
            None if body.get("phase") is None else payload.choice(Phase, body, "phase", where),
            None if verdict is None else VerdictJson.from_json(verdict, where=f"{where}.verdict"),
            None if error is None else ErrorBody.from_json(error, where=f"{where}.error"),
            payload.optional_text(body, "pump", where),
        )


# -- the result --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The ``data`` of one ``pump.command.result``; build it with the named constructors."""

    id: str | None  # None only when no id could be read (bad_json, too_large)
    phase: Phase
    verdict: VerdictJson | None = None
    error: ErrorBody | None = None
    readback: Readback | None = None
    confirm_token: str | None = None
    confirm_expires_at: datetime | None = None
    first: FirstOutcome | None = None
    reconciled: bool = False  # settled from the device after a restart interrupted it
    repeated: bool = False  # a final result sent again after a restart
    source: CommandSource | None = None
    order_id: str | None = None  # the order's id when source is piv
    command: JsonObject | None = None  # a PIV order to confirm, as the equivalent command

    @classmethod
    def rejected(
        cls,
        command_id: str | None,
        *,
        error: ErrorBody | None = None,
        verdict: VerdictJson | None = None,
    ) -> CommandResult:
        """``rejected`` with ``error`` (bad request, expired...) or a reject ``verdict``."""
        if (error is None) == (verdict is None):
            raise ValueError("rejected needs exactly one of error or verdict")
        return cls(command_id, Phase.REJECTED, verdict=verdict, error=error)

    @classmethod
    def needs_confirmation(
        cls, command_id: str, *, verdict: VerdictJson, confirm_token: str, expires_at: datetime
    ) -> CommandResult:
        """The gate asks for a confirmation; resend with ``confirm`` {token, reason}."""
        return cls(
            command_id,
            Phase.NEEDS_CONFIRMATION,
            verdict=verdict,
            confirm_token=confirm_token,
            confirm_expires_at=expires_at,
        )

    @classmethod
    def accepted(cls, command_id: str, *, verdict: VerdictJson | None = None) -> CommandResult:
        """Passed the gate and sent to the device."""
        return cls(command_id, Phase.ACCEPTED, verdict=verdict)

    @classmethod
    def applied(cls, command_id: str, *, readback: Readback) -> CommandResult:
        """The device's read-back matches."""
        return cls(command_id, Phase.APPLIED, readback=readback)

    @classmethod
    def failed(
        cls, command_id: str, *, error: ErrorBody, readback: Readback | None = None
    ) -> CommandResult:
        """The device refused, or nothing was sent; verified unchanged."""
        return cls(command_id, Phase.FAILED, error=error, readback=readback)

    @classmethod
    def uncertain(cls, command_id: str, *, error: ErrorBody) -> CommandResult:
        """No verified answer from the device; reconciled on the next poll, reported by event."""
        return cls(command_id, Phase.UNCERTAIN, error=error)

    @classmethod
    def duplicate(cls, command_id: str, *, first: FirstOutcome) -> CommandResult:
        """A repeated id: never re-executed; ``first`` is the first outcome, which must be
        known (a ``first`` without a phase breaks the contract: the gate refuses such a repeat
        instead, daemon/core/command_life.no_outcome_yet)."""
        if first.phase is None:
            raise ValueError(f"command {command_id}: a duplicate needs a first outcome")
        return cls(command_id, Phase.DUPLICATE, first=first)

    def for_order(self, order_id: str, command: JsonObject | None = None) -> CommandResult:
        """This result as the answer to a hospital order (``source`` piv), with the command to
        confirm when it asks for a confirmation."""
        return replace(self, source=CommandSource.PIV, order_id=order_id, command=command)

    def to_json(self) -> JsonObject:
        """The result's ``data`` object, as published."""
        expires = self.confirm_expires_at
        return {"id": self.id, "phase": self.phase.value} | _present(
            verdict=_json(self.verdict),
            error=_json(self.error),
            readback=_json(self.readback),
            confirm_token=self.confirm_token,
            confirm_expires_at=None if expires is None else format_ts(expires),
            first=_json(self.first),
            reconciled=self.reconciled or None,
            repeated=self.repeated or None,
            source=None if self.source is None else self.source.value,
            order_id=self.order_id,
            command=self.command,
        )

    @classmethod
    def from_json(cls, data: object, *, where: str = "result") -> CommandResult:
        """A result's ``data`` back (as a journaled refusal keeps it); ``PayloadError`` names
        the field that is wrong."""
        body = payload.as_object(data, where)
        command = body.get("command")
        expires = payload.optional_text(body, "confirm_expires_at", where)
        try:
            expires_at = None if expires is None else parse_ts(expires)
        except ValueError as exc:
            raise PayloadError(f"{where}.confirm_expires_at: {exc}") from None
        return cls(
            payload.optional_text(body, "id", where),
            payload.choice(Phase, body, "phase", where),
            verdict=(
                None
                if body.get("verdict") is None
                else VerdictJson.from_json(body["verdict"], where=f"{where}.verdict")
            ),
            error=(
                None
                if body.get("error") is None
                else ErrorBody.from_json(body["error"], where=f"{where}.error")
            ),
            readback=_optional_readback(body.get("readback"), f"{where}.readback"),
            confirm_token=payload.optional_text(body, "confirm_token", where),
            confirm_expires_at=expires_at,
            first=(
                None
                if body.get("first") is None
                else FirstOutcome.from_json(body["first"], where=f"{where}.first")
            ),
            reconciled=payload.flag(body, "reconciled", where),
            repeated=payload.flag(body, "repeated", where),
            source=None
            if body.get("source") is None
            else payload.choice(CommandSource, body, "source", where),
            order_id=payload.optional_text(body, "order_id", where),
            command=None
            if command is None
            else dict(payload.as_object(command, f"{where}.command")),
        )


# -- the outcome kept for an id ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceBefore:
    """What the device showed before a write (journaled with ``accepted``): a restart settles
    the command by comparing the device with it, never by the target alone."""

    status: str
    rate_ml_h: float
    alarms: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        return {"status": self.status, "rate": self.rate_ml_h, "alarms": list(self.alarms)}

    @classmethod
    def from_json(cls, data: object, *, where: str = "before") -> DeviceBefore:
        body = payload.as_object(data, where)
        rate = body.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise PayloadError(f"{where}.rate: expected a number, got {rate!r}")
        alarms = body.get("alarms") or []
        if not isinstance(alarms, list) or not all(isinstance(a, str) for a in alarms):
            raise PayloadError(f"{where}.alarms: expected a list of strings, got {alarms!r}")
        return cls(payload.text(body, "status", where), float(rate), tuple(alarms))


@dataclass(frozen=True, slots=True)
class KeptOutcome:
    """The outcome the journal keeps for a command id: what a duplicate is told (``first``,
    with the pump), the payload's fingerprint (a retry or another command under the same id),
    the final read-back (to repeat a final result after a restart), the device's state before
    the write and whether the write was being sent (to settle a write a crash interrupted)."""

    first: FirstOutcome
    fingerprint: str | None = None
    readback: Readback | None = None
    before: DeviceBefore | None = None
    sending: bool = False

    @classmethod
    def of(
        cls,
        pump_id: str,
        fingerprint: str,
        answer: CommandResult,
        before: DeviceBefore | None = None,
    ) -> KeptOutcome:
        """What to keep for ``answer``, the latest result of the command on ``pump_id``."""
        first = FirstOutcome(answer.phase, answer.verdict, answer.error, pump_id)
        return cls(first, fingerprint, answer.readback, before)

    @property
    def phase(self) -> Phase | None:
        return self.first.phase

    @property
    def pump(self) -> str | None:
        return self.first.pump

    @property
    def verdict(self) -> VerdictJson | None:
        return self.first.verdict

    def marked_sending(self) -> KeptOutcome:
        """This ``accepted`` outcome, recorded just before the write goes out."""
        return replace(self, sending=True)

    def repeated(self, command_id: str) -> CommandResult:
        """The final result this outcome records, to publish again after a restart."""
        if self.phase is None:
            raise ValueError(f"command {command_id}: no outcome recorded to repeat")
        return CommandResult(
            command_id,
            self.phase,
            verdict=self.first.verdict,
            error=self.first.error,
            readback=self.readback,
            repeated=True,
        )

    def to_json(self) -> JsonObject:
        """The journal's JSON of it (the ``first`` column and the outcome rows)."""
        return self.first.to_json() | _present(
            fingerprint=self.fingerprint,
            readback=_json(self.readback),
            before=_json(self.before),
            sending=self.sending or None,
        )

    @classmethod
    def from_json(cls, data: object, *, where: str = "outcome") -> KeptOutcome:
        """A journaled outcome back; ``PayloadError`` naming the field when it is malformed."""
        body = payload.as_object(data, where)
        if body.get("phase") is None:
            raise PayloadError(f"{where}.phase: required field missing")
        before = body.get("before")
        first = FirstOutcome.from_json(body, where=where)
        return cls(
            first,
            payload.optional_text(body, "fingerprint", where),
            _optional_readback(body.get("readback"), f"{where}.readback"),
            None if before is None else DeviceBefore.from_json(before, where=f"{where}.before"),
            payload.flag(body, "sending", where),
        )


#: the outcome of a known id whose first command has no outcome recorded yet
PENDING = KeptOutcome(FirstOutcome(None))
