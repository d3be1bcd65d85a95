"""Severities, findings and the verdict (docs/check.md), with their exact JSON shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Final

from protocol.units import ML_PER_H

#: json's C string escaping: ``encode_basestring_ascii`` or ``encode_basestring``
_Encode = Callable[[str], str]


class Severity(Enum):
    """How strongly a finding gates a change, ordered: info < advisory < confirm < reject."""

    INFO = "info"
    ADVISORY = "advisory"
    CONFIRM = "confirm"
    REJECT = "reject"

    @property
    def rank(self) -> int:
        """Position in the order info < advisory < confirm < reject."""
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return _RANK[self] < _RANK[other]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return _RANK[self] <= _RANK[other]

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return _RANK[self] > _RANK[other]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return _RANK[self] >= _RANK[other]


_RANK: Final = {Severity.INFO: 0, Severity.ADVISORY: 1, Severity.CONFIRM: 2, Severity.REJECT: 3}


class Outcome(Enum):
    """The verdict: the most severe finding, with info and advisory meaning accept."""

    ACCEPT = "accept"
    CONFIRM = "confirm"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class LibraryIdentity:
    """Which library produced a verdict: its name, version and the sha256 of its file bytes."""

    name: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        """``{"name", "version", "sha256"}`` as in the verdict and in bridge/info."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def _json(self, text: _Encode) -> str:
        return (
            f'{{"name": {text(self.name)}, "version": {text(self.version)}, '
            f'"sha256": {text(self.sha256)}}}'
        )


@dataclass(frozen=True, slots=True)
class Quantity:
    """A value with its canonical unit."""

    value: Decimal
    unit: str

    def to_dict(self) -> dict[str, Any]:
        """``{"value": <number>, "unit": <UCUM>}``."""
        return {"value": _number(self.value), "unit": self.unit}

    def __str__(self) -> str:
        return f"{_text(self.value)} {self.unit}"

    def _json(self, text: _Encode) -> str:
        return f'{{"value": {_json_number(self.value)}, "unit": {text(self.unit)}}}'


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's judgement: stable id, severity, a message for people, limit and observed."""

    rule: str
    severity: Severity
    message: str
    limit: Quantity | None = None
    observed: Quantity | None = None

    def to_dict(self) -> dict[str, Any]:
        """The finding object of the verdict JSON; ``limit``/``observed`` only when known."""
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
        }
        if self.limit is not None:
            out["limit"] = self.limit.to_dict()
        if self.observed is not None:
            out["observed"] = self.observed.to_dict()
        return out

    def _json(self, text: _Encode) -> str:
        out = (
            f'{{"rule": {text(self.rule)}, "severity": "{self.severity.value}", '
            f'"message": {text(self.message)}'
        )
        if self.limit is not None:
            out += f', "limit": {self.limit._json(text)}'
        if self.observed is not None:
            out += f', "observed": {self.observed._json(text)}'
        return out + "}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a check request.

    ``rate`` is the pump rate in mL/h at the pump's resolution (rounded toward safety),
    ``dose`` the dose that rate delivers, in the drug's canonical unit; both are ``None`` when
    they cannot be computed (unknown drug, unconvertible unit, missing weight), which only
    happens with a reject finding.
    ``findings`` are sorted most severe first, then by rule id and message, so the verdict is
    deterministic.
    """

    outcome: Outcome
    rate: Decimal | None
    dose: Quantity | None
    findings: tuple[Finding, ...]
    library: LibraryIdentity

    @property
    def verdict(self) -> str:
        """``"accept"``, ``"confirm"`` or ``"reject"``."""
        return self.outcome.value

    def findings_at_least(self, severity: Severity) -> tuple[Finding, ...]:
        """The findings of ``severity`` or worse, most severe first.

        A rate change observed at the pump (front panel, another system) is judged as a
        request by rate with ``current`` = the rate before it; the findings it must report
        are ``verdict.findings_at_least(Severity.CONFIRM)`` (empty: nothing to report).
        """
        return tuple(f for f in self.findings if f.severity >= severity)

    def to_dict(self) -> dict[str, Any]:
        """Exactly the documented verdict JSON (``rate``/``dose`` null when not computable)."""
        return {
            "verdict": self.outcome.value,
            "rate": None if self.rate is None else {"value": _number(self.rate), "unit": ML_PER_H},
            "dose": None if self.dose is None else self.dose.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "library": self.library.to_dict(),
        }

    def json_text(self, *, ensure_ascii: bool = True) -> str:
        """``json.dumps(self.to_dict(), ensure_ascii=ensure_ascii)``, byte for byte, written
        directly: ``infusiond check`` prints one verdict per request, and json.dumps (a new
        encoder per call walking a dict built only for it) costs several times as much
        (docs/performance.md, check). Strings go through json's own C escaping."""
        text = encode_basestring_ascii if ensure_ascii else encode_basestring
        rate = (
            "null"
            if self.rate is None
            else f'{{"value": {_json_number(self.rate)}, "unit": "{ML_PER_H}"}}'
        )
        dose = "null" if self.dose is None else self.dose._json(text)
        findings = ", ".join([f._json(text) for f in self.findings])
        return (
            f'{{"verdict": "{self.outcome.value}", "rate": {rate}, "dose": {dose}, '
            f'"findings": [{findings}], "library": {self.library._json(text)}}}'
        )


def outcome_of(findings: tuple[Finding, ...] | list[Finding]) -> Outcome:
    """The most severe finding decides; info and advisory findings mean accept."""
    worst = max((f.severity.rank for f in findings), default=0)
    if worst >= Severity.REJECT.rank:
        return Outcome.REJECT
    if worst >= Severity.CONFIRM.rank:
        return Outcome.CONFIRM
    return Outcome.ACCEPT


def _number(value: Decimal) -> float:
    """A JSON number (always a float, shortest repr: ``Decimal("63.00")`` -> ``63.0``)."""
    return float(value)


_INF: Final = float("inf")


def _json_number(value: Decimal) -> str:
    """:func:`_number` as json.dumps writes it (its ``floatstr``: a value beyond the double
    range is ``Infinity``)."""
    number = float(value)
    if -_INF < number < _INF:
        return float.__repr__(number)
    if number == _INF:
        return "Infinity"
    return "-Infinity" if number == -_INF else "NaN"


def _text(value: Decimal) -> str:
    """A compact human form of a Decimal (no exponent, no trailing zeros, <= 6 significant)."""
    if value == value.to_integral_value():
        return str(int(value))
    text = f"{float(value):.6g}"
    if "e" in text:
        text = format(value.normalize(), "f")
    return text


def fmt(value: Decimal) -> str:
    """Human form of a number in messages."""
    return _text(value)
