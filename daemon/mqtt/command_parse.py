"""From raw MQTT command bytes to a validated :class:`Command` or a :class:`Rejection`
(docs/integration-guide.md, "Error codes"); the results themselves are built in
:mod:`daemon.base.results`.

Order of checks, each answering with its own error code:

1. ``too_large``: more than 16 KiB, checked on the byte count before anything is parsed.
2. ``retained``: a retained message is never executed, whatever it contains.
3. ``bad_json``: not UTF-8, not JSON, or empty.
4. ``bad_request``: not an object, duplicate keys, nesting deeper than the schema, a string
   (key or value) that cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``: it
   could be neither journaled nor answered), wrong or
   missing fields, unknown fields, NaN/Infinity, negative or out-of-range numbers, an
   ``issued_at`` more than :data:`MAX_CLOCK_SKEW_S` in the future (the sender's clock is wrong:
   that is a bad request, not an expired one). The message names the field.
5. ``bad_signature``: the ``sig`` does not verify, or is missing where signatures are required
   (:mod:`daemon.mqtt.signing`).
6. ``expired``: ``issued_at + ttl_s`` is before ``now``.

``now`` is an argument: nothing here reads the clock. Rejections carry the command id when one
could be read (a UTF-8-encodable string of at most 64 characters), else ``None``; their
messages are always encodable (anything taken from the input is escaped and shortened).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from daemon.base.payload import JsonObject
from daemon.base.results import ErrorBody, ErrorCode
from daemon.base.timefmt import format_ts, parse_ts
from daemon.mqtt.signing import SignaturePolicy

MAX_COMMAND_BYTES = 16 * 1024
MAX_ID_CHARS = 64
MAX_DEPTH = 4  # command -> program -> dose -> value is the deepest legitimate nesting
MAX_CLOCK_SKEW_S = 10.0
MAX_TTL_S = 3600.0
MAX_QUANTITY = 1_000_000.0
MAX_SHOWN_CHARS = 64  # a key or path from the input, as quoted in a message
COMMAND_SCHEMA = "infusiond.pump.command/1"


@dataclass(frozen=True)
class Rejection:
    """A command refused before the gate: answer ``rejected`` with ``error``."""

    id: str | None
    code: ErrorCode
    message: str

    def error(self) -> ErrorBody:
        """The ``error`` of its ``rejected`` result (the message made encodable)."""
        return ErrorBody(self.code, encodable(self.message))


def encodable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def shown(text: str) -> str:
    """A key or path from the input as a message quotes it: encodable, at most
    :data:`MAX_SHOWN_CHARS` characters (then an ellipsis)."""
    safe = encodable(text)
    return safe if len(safe) <= MAX_SHOWN_CHARS else safe[: MAX_SHOWN_CHARS - 1] + "\u2026"


# -- the command model -------------------------------------------------------------------

Text = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=False)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Unit = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Magnitude = Annotated[float, Field(ge=0, le=MAX_QUANTITY, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CommandQuantity(_Strict):
    """``{"value", "unit"}``; the unit is checked by the drug library, not here."""

    value: Magnitude
    unit: Unit


class By(_Strict):
    clinician: Text


class Confirm(_Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    reason: Reason


class Signature(_Strict):
    """``{"kid", "hmac"}``: HMAC-SHA256 of the canonical command (see daemon.mqtt.signing)."""

    kid: Text
    hmac: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class NewProgram(_Strict):
    drug: Text
    concentration: CommandQuantity
    diluent: Text
    route: Literal["central", "peripheral"]
    profile: Text
    weight_kg: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None
    dose: CommandQuantity
    vtbi: CommandQuantity | None = None


class CommandAction(StrEnum):
    """What a command asks (its ``action``); a StrEnum, so that it is published and journaled as
    the very string it was received as."""

    SET_DOSE = "set_dose"
    SET_RATE = "set_rate"
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    PROGRAM = "program"


#: the one parameter field each action needs (the others need none)
_ACTION_FIELD = {
    CommandAction.SET_DOSE: "dose",
    CommandAction.SET_RATE: "rate",
    CommandAction.PROGRAM: "program",
}


class Command(_Strict):
    """A validated ``infusiond.pump.command/1`` (``schema_`` is the optional ``schema`` key)."""

    schema_: Literal["infusiond.pump.command/1"] | None = Field(default=None, alias="schema")
    id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
    issued_at: datetime
    ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S, allow_inf_nan=False)] = 30.0
    by: By
    # lax for this one field: the model is strict (no coercion) but the decoded JSON gives the
    # action as a string, which becomes the enum member it names (anything else is refused with
    # the same message a Literal gave)
    action: Annotated[CommandAction, Field(strict=False)]
    dose: CommandQuantity | None = None
    rate: CommandQuantity | None = None
    program: NewProgram | None = None
    confirm: Confirm | None = None
    sig: Signature | None = None

    @field_validator("issued_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> datetime:
        if not isinstance(value, str):
            raise ValueError("must be an RFC 3339 string with a zone")  # noqa: TRY004
        return parse_ts(value)

    @model_validator(mode="after")
    def _action_fields(self) -> Self:
        wanted = _ACTION_FIELD.get(self.action)
        for name in ("dose", "rate", "program"):
            present = getattr(self, name) is not None
            if name == wanted and not present:
                raise ValueError(f"{name}: required for action {self.action}")
            if name != wanted and present:
                raise ValueError(f"{name}: not allowed for action {self.action}")
        return self

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(seconds=self.ttl_s)

    def to_json(self) -> JsonObject:
        """The command as JSON-able data (for the journal)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["issued_at"] = format_ts(self.issued_at)
        return data


# -- parsing -----------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    """The ``object_pairs_hook`` of the payload's decoding: an object, refusing a repeated key."""
    result: JsonObject = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _too_deep(value: object, limit: int) -> str | None:
    """The path of the first container nested deeper than ``limit``, else None (iterative)."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return path or "(root)"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                stack.append((child, f"{path}.{key}" if path else str(key), depth + 1))
    return None


def _readable_id(obj: object) -> str | None:
    if isinstance(obj, dict):
        cid = obj.get("id")
        if isinstance(cid, str) and 0 < len(cid) <= MAX_ID_CHARS and encodable(cid) == cid:
            return cid
    return None


def _unencodable(value: object) -> tuple[str, str] | None:
    """``(path, what)`` of the first key or string that UTF-8 cannot encode (a lone
    surrogate from a ``\\ud800`` escape), else None. Iterative; call it on shallow data."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str) and encodable(node) != node:
            return path or "(root)", "value"
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, child in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and encodable(key) != key:
                return where, "key"
            stack.append((child, where))
    return None


def _describe(exc: ValidationError) -> str:
    """Every problem of ``exc``, each naming its field, separated by ``"; "``."""
    return "; ".join(_describe_one(err) for err in exc.errors(include_url=False))


def _describe_one(err: ErrorDetails) -> str:
    loc = shown(".".join(str(p) for p in err["loc"]))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc and ":" in msg:  # model-level validator already names the field
        return msg
    if err["type"] == "missing":
        return f"{loc}: required field missing"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    return f"{loc or 'command'}: {msg}"


def parse_command(
    payload: bytes,
    *,
    now: datetime,
    retained: bool = False,
    max_skew_s: float = MAX_CLOCK_SKEW_S,
    signatures: SignaturePolicy | None = None,
) -> Command | Rejection:
    """Validate one command payload; never raises for any input bytes."""
    if len(payload) > MAX_COMMAND_BYTES:
        return Rejection(
            None,
            ErrorCode.TOO_LARGE,
            f"payload is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}",
        )
    obj: object = None
    json_error: str | None = None
    duplicate_key: str | None = None
    too_deep = False
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        json_error = f"payload is not UTF-8 (byte {exc.start})"
    except _DuplicateKeyError as exc:
        duplicate_key = str(exc)
    except json.JSONDecodeError as exc:
        json_error = f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:  # the C scanner's guard against nesting bombs
        too_deep = True
    if not payload.strip():
        json_error = "empty payload"
    cid = _readable_id(obj)
    if retained:
        return Rejection(cid, ErrorCode.RETAINED, "retained commands are never executed")
    if duplicate_key is not None:
        return Rejection(None, ErrorCode.BAD_REQUEST, f"{shown(duplicate_key)}: duplicate key")
    if too_deep:
        return Rejection(
            None, ErrorCode.BAD_REQUEST, f"command: nested deeper than {MAX_DEPTH} levels"
        )
    if json_error is not None:
        return Rejection(None, ErrorCode.BAD_JSON, json_error)
    if not isinstance(obj, dict):
        return Rejection(None, ErrorCode.BAD_REQUEST, "command: must be a JSON object")
    deep = _too_deep(obj, MAX_DEPTH)
    if deep is not None:
        return Rejection(cid, ErrorCode.BAD_REQUEST, f"{shown(deep)}: nested too deeply")
    bad_text = _unencodable(obj)
    if bad_text is not None:
        where, what = bad_text
        return Rejection(
            cid,
            ErrorCode.BAD_REQUEST,
            f"{shown(where)}: the {what} is not valid Unicode text (a lone surrogate cannot be"
            " encoded as UTF-8)",
        )
    try:
        command = Command.model_validate(obj)
    except ValidationError as exc:
        return Rejection(cid, ErrorCode.BAD_REQUEST, _describe(exc))
    except (ValueError, OverflowError) as exc:  # e.g. an int too large for a float
        return Rejection(cid, ErrorCode.BAD_REQUEST, f"command: {exc}")
    bad_sig = (signatures or SignaturePolicy()).check(obj)
    if bad_sig is not None:
        return Rejection(command.id, ErrorCode.BAD_SIGNATURE, bad_sig)
    ahead = (command.issued_at - now).total_seconds()
    if ahead > max_skew_s:
        return Rejection(
            command.id,
            ErrorCode.BAD_REQUEST,
            f"issued_at: {ahead:.1f} s in the future (clock skew allowance {max_skew_s:g} s)",
        )
    if now > command.expires_at:
        late = (now - command.expires_at).total_seconds()
        return Rejection(
            command.id,
            ErrorCode.EXPIRED,
            f"expired {late:.1f} s ago (issued_at {format_ts(command.issued_at)}"
            f" + ttl_s {command.ttl_s:g})",
        )
    return command
