"""Units (docs/check.md): UCUM canonical codes, aliases and exact dose <-> pump-rate arithmetic.

This is a small table-driven converter, not pint. pint (even with Decimal) parses unit strings
and builds quantity objects on every call, which costs tens of microseconds per conversion; the
rule engine does several conversions per request and must reach >= 10,000 verdicts/s on one
core. The vocabulary here is closed (a handful of dose, concentration and rate units), so a
table of exact Decimal factors is both faster and easier to audit, and every row is tested.

All arithmetic is :class:`decimal.Decimal`. Inputs that arrive as floats are converted with
``Decimal(str(x))`` (the shortest repr), so ``0.04`` is exactly ``Decimal("0.04")``. Limit
comparisons (:func:`le`, :func:`ge`, :func:`within`) are inclusive and additionally tolerate a
relative difference of 1e-9, so values computed through a division (a dose derived from a rate)
are not "above" a limit because of the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Final

REL_TOL: Final = Decimal("1e-9")
SIXTY: Final = Decimal(60)
ML_PER_H: Final = "mL/h"


class AmountKind(Enum):
    """What a dose or concentration counts: drug mass (base: ug) or USP units."""

    MASS = "mass"
    USP_UNITS = "[USP'U]"


class UnitError(ValueError):
    """A unit string is unknown, or two units cannot be converted into one another.

    Deliberately not an :class:`InfusiondError`: the engine turns it into a UNIT_MISMATCH
    finding, the library loader into a LibraryError naming the field.
    """


@dataclass(frozen=True, slots=True)
class DoseUnit:
    """A dose rate unit: ``factor`` base amounts (ug or USP units) per kg? per ``minutes``."""

    code: str
    amount: AmountKind
    factor: Decimal
    per_kg: bool
    minutes: Decimal


@dataclass(frozen=True, slots=True)
class ConcentrationUnit:
    """A concentration unit: ``factor`` base amounts per mL."""

    code: str
    amount: AmountKind
    factor: Decimal


_M = AmountKind.MASS
_U = AmountKind.USP_UNITS
_ONE = Decimal(1)
_MG = Decimal(1000)

DOSE_UNITS: Final[dict[str, DoseUnit]] = {
    u.code: u
    for u in (
        DoseUnit("ug/kg/min", _M, _ONE, per_kg=True, minutes=_ONE),
        DoseUnit("ug/kg/h", _M, _ONE, per_kg=True, minutes=SIXTY),
        DoseUnit("mg/kg/h", _M, _MG, per_kg=True, minutes=SIXTY),
        DoseUnit("ug/min", _M, _ONE, per_kg=False, minutes=_ONE),
        DoseUnit("ug/h", _M, _ONE, per_kg=False, minutes=SIXTY),
        DoseUnit("mg/min", _M, _MG, per_kg=False, minutes=_ONE),
        DoseUnit("mg/h", _M, _MG, per_kg=False, minutes=SIXTY),
        DoseUnit("[USP'U]/min", _U, _ONE, per_kg=False, minutes=_ONE),
        DoseUnit("[USP'U]/h", _U, _ONE, per_kg=False, minutes=SIXTY),
        DoseUnit("[USP'U]/kg/min", _U, _ONE, per_kg=True, minutes=_ONE),
    )
}

CONCENTRATION_UNITS: Final[dict[str, ConcentrationUnit]] = {
    u.code: u
    for u in (
        ConcentrationUnit("ug/mL", _M, _ONE),
        ConcentrationUnit("mg/mL", _M, _MG),
        ConcentrationUnit("[USP'U]/mL", _U, _ONE),
    )
}

OTHER_UNITS: Final = frozenset({"mL/h", "mL", "kg", "mm[Hg]", "/min", "%"})

# The documented aliases (docs/check.md), plus the obvious spellings of the extra table rows.
ALIASES: Final[dict[str, str]] = {
    "mcg/kg/min": "ug/kg/min",
    "µg/kg/min": "ug/kg/min",
    "μg/kg/min": "ug/kg/min",  # Greek mu as well as the micro sign
    "mcg/kg/h": "ug/kg/h",
    "mcg/kg/hr": "ug/kg/h",
    "ug/kg/hr": "ug/kg/h",
    "mg/kg/hr": "mg/kg/h",
    "mcg/min": "ug/min",
    "µg/min": "ug/min",
    "μg/min": "ug/min",
    "mcg/h": "ug/h",
    "mcg/hr": "ug/h",
    "ug/hr": "ug/h",
    "mg/hr": "mg/h",
    "U/min": "[USP'U]/min",
    "units/min": "[USP'U]/min",
    "U/h": "[USP'U]/h",
    "units/h": "[USP'U]/h",
    "U/kg/min": "[USP'U]/kg/min",
    "ml/h": "mL/h",
    "mL/hr": "mL/h",
    "ml/hr": "mL/h",
    "mcg/mL": "ug/mL",
    "µg/mL": "ug/mL",
    "μg/mL": "ug/mL",
    "mcg/ml": "ug/mL",
    "ug/ml": "ug/mL",
    "mg/ml": "mg/mL",
    "U/mL": "[USP'U]/mL",
    "units/mL": "[USP'U]/mL",
    "mmHg": "mm[Hg]",
}


def canonical(unit: str) -> str:
    """The canonical UCUM code for ``unit`` (an alias or already canonical).

    Raises :class:`UnitError` for a unit outside the vocabulary of docs/check.md.
    """
    code = ALIASES.get(unit, unit)
    if code in DOSE_UNITS or code in CONCENTRATION_UNITS or code in OTHER_UNITS:
        return code
    raise UnitError(f"unknown unit {unit!r}")


def dose_unit(unit: str) -> DoseUnit:
    """The dose unit row for ``unit`` (alias accepted); UnitError if it is not a dose unit."""
    row = DOSE_UNITS.get(ALIASES.get(unit, unit))
    if row is None:
        raise UnitError(f"{unit!r} is not a dose unit (e.g. ug/kg/min, ug/min, mg/h, [USP'U]/min)")
    return row


def concentration_unit(unit: str) -> ConcentrationUnit:
    """The concentration unit row for ``unit``; UnitError if it is not a concentration unit."""
    row = CONCENTRATION_UNITS.get(ALIASES.get(unit, unit))
    if row is None:
        raise UnitError(f"{unit!r} is not a concentration unit (ug/mL, mg/mL, [USP'U]/mL)")
    return row


def rate_unit(unit: str) -> str:
    """Canonical ``mL/h`` for any accepted spelling; UnitError otherwise."""
    if ALIASES.get(unit, unit) != ML_PER_H:
        raise UnitError(f"{unit!r} is not a pump rate unit (mL/h)")
    return ML_PER_H


def _weight_factor(unit: DoseUnit, weight_kg: Decimal | None) -> Decimal:
    if not unit.per_kg:
        return _ONE
    if weight_kg is None:
        raise UnitError(f"converting {unit.code} needs the patient's weight")
    return weight_kg


def convert_dose(
    value: Decimal, from_unit: DoseUnit, to_unit: DoseUnit, weight_kg: Decimal | None = None
) -> Decimal:
    """Convert a dose rate exactly; the weight is used only when one side is per kg."""
    if from_unit is to_unit:
        return value
    if from_unit.amount is not to_unit.amount:
        raise UnitError(f"cannot convert {from_unit.code} to {to_unit.code}")
    if from_unit.per_kg == to_unit.per_kg:
        w_from = w_to = _ONE
    else:
        w_from = _weight_factor(from_unit, weight_kg)
        w_to = _weight_factor(to_unit, weight_kg)
    per_min = value * from_unit.factor * w_from / from_unit.minutes
    return per_min * to_unit.minutes / (to_unit.factor * w_to)


def convert_concentration(
    value: Decimal, from_unit: ConcentrationUnit, to_unit: ConcentrationUnit
) -> Decimal:
    """Convert a concentration exactly (ug/mL <-> mg/mL; units only to units)."""
    if from_unit is to_unit:
        return value
    if from_unit.amount is not to_unit.amount:
        raise UnitError(f"cannot convert {from_unit.code} to {to_unit.code}")
    return value * from_unit.factor / to_unit.factor


def amount_per_min(value: Decimal, unit: DoseUnit, weight_kg: Decimal | None) -> Decimal:
    """Base amount (ug or USP units) per minute delivered by this dose."""
    return value * unit.factor * _weight_factor(unit, weight_kg) / unit.minutes


def dose_to_rate(
    value: Decimal,
    unit: DoseUnit,
    concentration: Decimal,
    concentration_unit: ConcentrationUnit,
    weight_kg: Decimal | None = None,
) -> Decimal:
    """Pump rate in mL/h: ``dose_per_min * 60 / concentration``, exact."""
    if unit.amount is not concentration_unit.amount:
        raise UnitError(f"a {unit.code} dose cannot be given from a {concentration_unit.code} bag")
    # One division at the end: the result is the correctly rounded quotient, so a rate that
    # is exact (on the pump's grid) converts back to exactly the dose it came from.
    numerator = value * unit.factor * _weight_factor(unit, weight_kg) * SIXTY
    return numerator / (unit.minutes * concentration * concentration_unit.factor)


def rate_to_dose(
    rate_ml_h: Decimal,
    unit: DoseUnit,
    concentration: Decimal,
    concentration_unit: ConcentrationUnit,
    weight_kg: Decimal | None = None,
) -> Decimal:
    """The dose (in ``unit``) that a pump rate in mL/h delivers; inverse of :func:`dose_to_rate`."""
    if unit.amount is not concentration_unit.amount:
        raise UnitError(f"a {unit.code} dose cannot be given from a {concentration_unit.code} bag")
    numerator = rate_ml_h * concentration * concentration_unit.factor * unit.minutes
    return numerator / (SIXTY * unit.factor * _weight_factor(unit, weight_kg))


# The comparisons below spell out the slack ``REL_TOL * max(|a|, |b|)`` instead of calling a
# helper: they run dozens of times per verdict (docs/performance.md, check). Past the exact
# test ``a <= b`` it is known that a > b, so when b >= 0 the larger magnitude is a itself: the
# same slack without abs() and max() (the usual case: doses, rates and limits are >= 0).


def le(a: Decimal, b: Decimal) -> bool:
    """``a <= b``, inclusive, tolerating a relative difference of 1e-9."""
    return a <= b or a - b <= REL_TOL * (a if b >= 0 else max(abs(a), abs(b)))


def ge(a: Decimal, b: Decimal) -> bool:
    """``a >= b``, inclusive, tolerating a relative difference of 1e-9."""
    return b <= a or b - a <= REL_TOL * (b if a >= 0 else max(abs(b), abs(a)))  # le(b, a)


def close(a: Decimal, b: Decimal) -> bool:
    """``a`` and ``b`` are equal within a relative tolerance of 1e-9."""
    return a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def within(value: Decimal, low: Decimal, high: Decimal) -> bool:
    """``low <= value <= high``, both ends inclusive and tolerant to float noise."""
    # ge(value, low) and le(value, high), inlined.
    return (
        low <= value or low - value <= REL_TOL * (low if value >= 0 else max(abs(low), abs(value)))
    ) and (
        value <= high
        or value - high <= REL_TOL * (value if high >= 0 else max(abs(value), abs(high)))
    )
