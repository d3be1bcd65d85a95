"""The check request (docs/check.md) as a pydantic model, and its parser.

Numbers become exact Decimals (floats through their shortest repr); NaN, Infinity and negative
doses, rates, weights or concentrations are errors. Malformed input raises
:class:`~protocol.errors.RequestError` whose message starts with the field path, e.g.
``requested.dose.value: must be a finite number`` or ``history[2].at: must have a time zone``.

Two doors, one model:

* untrusted input -- :func:`parse_request_json` (JSON text: ``infusiond check`` and the bench) and
  :func:`parse_untrusted_request` (an already decoded JSON object): a numeric field must be a
  JSON number. A string (``"value": "0.05"``), a boolean, NaN, an infinity or a value above
  the field's cap (at most 1e6) is an error naming the field; nothing is coerced.
* trusted internal callers -- :func:`parse_request` (a dict built in Python, e.g. by the
  daemon's gate): numbers may also be :class:`~decimal.Decimal` objects (exact, preferred) or
  decimal strings, which are read exactly. Booleans, NaN and infinities are refused here too.

Dose and concentration units are kept as given here: an unconvertible unit is a UNIT_MISMATCH
finding of the engine (the request is well-formed, the order is wrong), not a parse error.

The optional ``pump`` object describes the device: ``{"min_rate": 0.1, "max_rate": 999.99,
"resolution": 0.01}``, all in mL/h. Each field left out (or the whole object) is taken from the
library's ``pump_default``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self, cast

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

from protocol.errors import RequestError
from protocol.units import ALIASES

MAX_REQUEST_BYTES: Final = 64 * 1024
DEFAULT_RESOLUTION: Final = Decimal("0.01")


def _number(*, le: int, ge: int | None = None, gt: int | None = None) -> GetPydanticSchema:
    """A finite Decimal within bounds: from JSON only a JSON number (no string, no boolean);
    from Python (trusted callers) also a Decimal, an int or a decimal string.

    Both are pydantic-core schemas (no Python call per number). JSON goes through a strict
    float, which refuses "0.05", true, NaN and infinities and checks the bounds cheaply, and
    then becomes a Decimal through its shortest repr (0.05 -> Decimal("0.05")); that float is
    finite already, so the Decimal step skips its own finiteness check.
    """
    strict_json = core_schema.chain_schema(
        [
            core_schema.float_schema(strict=True, allow_inf_nan=False, ge=ge, gt=gt, le=le),
            core_schema.decimal_schema(allow_inf_nan=True),
        ]
    )
    python = core_schema.decimal_schema(
        ge=None if ge is None else Decimal(ge),
        gt=None if gt is None else Decimal(gt),
        le=Decimal(le),
        allow_inf_nan=False,
    )
    schema = core_schema.json_or_python_schema(json_schema=strict_json, python_schema=python)
    return GetPydanticSchema(lambda _type, _handler: schema)


# Caps far beyond any real value keep every number finite when written back as a JSON float.
NonNegative = Annotated[Decimal, _number(ge=0, le=1_000_000)]
Positive = Annotated[Decimal, _number(gt=0, le=1_000_000)]
Name = Annotated[str, Field(min_length=1, max_length=100)]
Unit = Annotated[str, Field(min_length=1, max_length=32)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Amount(_Model):
    """A dose or rate: ``{"value": >= 0, "unit": "..."}``."""

    value: NonNegative
    unit: Unit


class Concentration(_Model):
    """A bag concentration: ``{"value": > 0, "unit": "..."}``."""

    value: Positive
    unit: Unit


class Patient(_Model):
    """The patient: weight (needed for weight-based doses), baseline SBP, chronic hypertension."""

    weight_kg: Annotated[Decimal, _number(gt=0, le=1000)] | None = None
    baseline_sbp: Annotated[Decimal, _number(gt=0, le=400)] | None = None
    chronic_hypertension: bool = False


class Infusion(_Model):
    """What is in the bag and how it reaches the patient."""

    drug: Name
    concentration: Concentration
    diluent: Name
    route: Literal["central", "peripheral"]
    line_shares: tuple[Name, ...] = Field(default=(), max_length=32)


class Requested(_Model):
    """Exactly one of a dose, a pump rate (mL/h) or ``"action": "stop"``."""

    dose: Amount | None = None
    rate: Amount | None = None
    action: Literal["stop"] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = (self.dose is not None) + (self.rate is not None) + (self.action is not None)
        if given != 1:
            raise ValueError('give exactly one of "dose", "rate" or "action": "stop"')
        return self


class HistoryEntry(_Model):
    """A past dose change of this infusion: when, and the dose it was set to."""

    at: AwareDatetime
    dose: Amount


_BP: Final = "mm[Hg]"


class Reading(_Model):
    """One vital sign: value, unit, time of measurement (the unit is canonicalised by
    :class:`Vitals`, e.g. ``mmHg`` -> ``mm[Hg]``)."""

    value: NonNegative
    unit: Unit
    at: AwareDatetime


_VITAL_UNITS: Final = (("map", _BP), ("sbp", _BP), ("dbp", _BP), ("hr", "/min"), ("spo2", "%"))


class Vitals(_Model):
    """Latest readings; BP in mm[Hg] (alias mmHg), heart rate in /min."""

    map: Reading | None = None
    sbp: Reading | None = None
    dbp: Reading | None = None
    hr: Reading | None = None
    spo2: Reading | None = None

    @model_validator(mode="after")
    def _units(self) -> Self:
        # One validator for all readings (rather than one per Reading: each is a Python call);
        # the fields are read from the model's dict (getattr on a model is several times slower).
        fields = self.__dict__
        for name, expected in _VITAL_UNITS:
            reading: Reading | None = fields[name]
            if reading is None:
                continue
            unit = reading.unit
            if unit != expected:
                unit = ALIASES.get(unit, unit)
                if unit != expected:
                    raise ValueError(f"{name}.unit must be {expected!r}, not {unit!r}")
                # Only this new (frozen) Vitals is changed, never a Reading that may be shared.
                object.__setattr__(self, name, reading.model_copy(update={"unit": unit}))
        return self


class OtherInfusion(_Model):
    """Another channel's infusion for the same patient (its dose, if known)."""

    drug: Name
    dose: Amount | None = None


class Pump(_Model):
    """The pump's range and resolution, all in mL/h; a missing field comes from the library's
    ``pump_default``."""

    min_rate: NonNegative | None = None
    max_rate: Positive | None = None
    resolution: Positive | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (
            self.max_rate is not None
            and self.min_rate is not None
            and self.min_rate > self.max_rate
        ):
            raise ValueError("min_rate is above max_rate")
        return self


class CheckRequest(_Model):
    """The check request (including the optional ``pump``)."""

    now: AwareDatetime
    profile: Name
    patient: Patient = Patient()
    infusion: Infusion
    current: Amount | None = None
    requested: Requested
    history: tuple[HistoryEntry, ...] = Field(default=(), max_length=1000)
    vitals: Vitals | None = None
    other_infusions: tuple[OtherInfusion, ...] = Field(default=(), max_length=64)
    pump: Pump | None = None


_JSON_VALIDATOR: Final = CheckRequest.__pydantic_validator__

#: Every key of the request whose value is a number (``value`` is numeric wherever it occurs).
NUMERIC_KEYS: Final = frozenset(
    {"value", "weight_kg", "baseline_sbp", "min_rate", "max_rate", "resolution"}
)
_MAX_DEPTH: Final = 8  # the request is 4 levels deep; deeper is refused by the model anyway


def parse_request(data: Any) -> CheckRequest:
    """Validate a request built by a trusted internal caller (the gate) into a CheckRequest.

    Numbers may be Decimal (preferred: exact), int, float or a decimal string; RequestError
    names the field. Input from outside infusiond goes through :func:`parse_untrusted_request`
    or :func:`parse_request_json` instead.
    """
    if isinstance(data, CheckRequest):
        return data
    if not isinstance(data, dict):
        raise RequestError(f"request: must be a JSON object, not {type(data).__name__}")
    try:
        return CheckRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestError(*describe_validation_errors(exc)) from None


def parse_untrusted_request(data: Any) -> CheckRequest:
    """Validate a decoded JSON object from outside: numbers must be numbers (no coercion).

    A RequestError lists every problem: each non-number, then what the model finds wrong
    with the other fields.
    """
    if not isinstance(data, dict):
        return parse_request(data)
    problems: list[tuple[str, str]] = []
    _numbers_only(data, "", 0, problems)
    if not problems:
        return parse_request(data)
    named = {where for where, _ in problems}
    try:
        parse_request(data)
    except RequestError as exc:
        found = [(problem.split(": ", 1)[0], problem) for problem in exc.problems]
        problems.extend(pair for pair in found if pair[0] not in named)
    raise RequestError(*(text for _, text in problems))


def _numbers_only(node: Any, path: str, depth: int, problems: list[tuple[str, str]]) -> None:
    """Append (field, message) for every numeric field holding a non-number (str, bool)."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, dict):
        for name, value in node.items():
            where = f"{path}.{name}" if path else str(name)
            if name in NUMERIC_KEYS and value is not None:
                if isinstance(value, bool):
                    problems.append((where, f"{where}: must be a number, not {str(value).lower()}"))
                    continue
                if isinstance(value, str):
                    shown = value if len(value) <= 20 else value[:20] + "..."
                    text = f"{where}: must be a number, not a string ({shown!r})"
                    problems.append((where, f"{text}; write it without quotes"))
                    continue
            _numbers_only(value, where, depth + 1, problems)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _numbers_only(item, f"{path}[{index}]", depth + 1, problems)


def parse_request_json(text: str | bytes) -> CheckRequest:
    """Decode and validate a request from JSON text (capped at 64 KiB); numbers must be numbers.

    Valid requests take pydantic-core's one-pass JSON validation (whose number fields accept
    JSON numbers only); anything it refuses is re-parsed with :func:`json.loads` (which also
    reads NaN/Infinity, so they are reported as ``<field>: must be a finite number``) and
    checked by :func:`parse_untrusted_request` for the field-naming error.
    """
    if len(text) > MAX_REQUEST_BYTES:
        raise RequestError(f"request: larger than {MAX_REQUEST_BYTES} bytes")
    try:
        # Fast path: pydantic-core parses and validates in one pass (about twice as fast). The
        # model's own validator is called directly: model_validate_json only adds a Python
        # frame and an argument check around it (~0.3 us of a ~35 us verdict).
        request = cast(CheckRequest, _JSON_VALIDATOR.validate_json(text))
    except ValidationError:
        pass  # slow path below: json.loads + validate, for a message naming the field
    else:
        return _zero_means_zero(request, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"request: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise RequestError(f"request: not UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise RequestError("request: nested too deeply") from None
    return _zero_means_zero(parse_untrusted_request(data), text)


def _zero_means_zero(request: CheckRequest, text: str | bytes) -> CheckRequest:
    """A requested dose or rate of 0 is a stop: make sure the text said 0, and not a number
    too small for a float (``1e-400`` reads as 0.0). Only stops pay for the second parse."""
    requested = request.requested
    amount = requested.dose if requested.dose is not None else requested.rate
    if amount is None or amount.value != 0:
        return request
    kind = "dose" if requested.dose is not None else "rate"
    written = json.loads(text, parse_float=Decimal)["requested"][kind]["value"]
    if written != 0:
        raise RequestError(
            f"requested.{kind}.value: {written} is neither 0 nor a {kind} a pump could run; "
            'send 0 or {"action": "stop"} to stop'
        )
    return request


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("history", 2, "at")`` -> ``history[2].at``."""
    out = ""
    for step in loc:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out or "request"


_MESSAGES: Final = {
    "finite_number": "must be a finite number",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "timezone_aware": "must have a time zone (RFC 3339, e.g. 2026-11-26T10:00:00Z)",
    "datetime_from_date_parsing": "must be an RFC 3339 date-time",
    "datetime_parsing": "must be an RFC 3339 date-time",
    "datetime_type": "must be an RFC 3339 date-time string",
    "decimal_parsing": "must be a number",
    "decimal_type": "must be a number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "model_type": "must be an object",
    "tuple_type": "must be a list",
    "dict_type": "must be an object",
}


def describe_validation_errors(exc: ValidationError) -> list[str]:
    """One line per problem, each naming its field and what is wrong with it; an unknown
    field first (a misspelt key also makes the real key "missing")."""
    errors = exc.errors(include_url=False)
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")  # stable: otherwise in order
    return [_describe_one(error) for error in errors]


def describe_validation_error(exc: ValidationError) -> str:
    """Every problem of ``exc`` on one line, separated by ``"; "``."""
    return "; ".join(describe_validation_errors(exc))


def _describe_one(error: Any) -> str:
    loc = tuple(error["loc"])
    # Union members (e.g. Amount | None) add the member type to the loc; drop those.
    loc = tuple(s for s in loc if not (isinstance(s, str) and s[:1].isupper()))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _MESSAGES:
        text = _MESSAGES[kind]
    elif kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}.get(
            kind, "<"
        )
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # a JSON bound is a float: 1000000.0 -> 1000000
        text = f"must be {op} {bound}"
    elif kind == "too_long":
        text = f"must have at most {ctx.get('max_length')} items"
    elif kind == "string_too_short":
        text = "must not be empty"
    elif kind == "literal_error":
        text = f"must be {ctx.get('expected')}"
    else:
        text = str(error["msg"]).removeprefix("Value error, ")
    return f"{field_path(loc)}: {text}"
