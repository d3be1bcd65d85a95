"""New Era numbers: the 4-digit float format, rate units (MM/MH/UM/UH) and volume units.

The pump reads and writes floats of at most 4 digits and one decimal point (``9.000``,
``52.50``, ``1500``, ``0.050``). To keep resolution, :func:`encode_rate` picks the rate unit in
which the requested mL/h value is represented with the smallest error (ties go to mL/h, the
unit people read). Values are ``Decimal`` so conversions are exact.
"""

from __future__ import annotations

import enum
import re
from decimal import ROUND_HALF_EVEN, Decimal

from drivers.newera.errors import NotRepresentable

MAX_DIGITS = 4
_FLOAT = re.compile(r"(\d*)\.?(\d*)")


class RateUnit(enum.Enum):
    """Rate units of the ``RAT`` command."""

    ML_H = "MH"
    UL_H = "UH"
    ML_MIN = "MM"
    UL_MIN = "UM"

    @property
    def ml_h(self) -> Decimal:
        """mL/h per one of this unit."""
        return _RATE_FACTORS[self]


_RATE_FACTORS = {
    RateUnit.ML_H: Decimal(1),
    RateUnit.UL_H: Decimal("0.001"),
    RateUnit.ML_MIN: Decimal(60),
    RateUnit.UL_MIN: Decimal("0.06"),
}


class VolumeUnit(enum.Enum):
    """Volume units of ``VOL`` and ``DIS``."""

    UL = "UL"
    ML = "ML"

    @property
    def ml(self) -> Decimal:
        """mL per one of this unit."""
        return Decimal("0.001") if self is VolumeUnit.UL else Decimal(1)


def parse_float(text: str) -> Decimal:
    """Parse a pump float; ValueError (naming the text) if it is not 1-4 digits, one point."""
    m = _FLOAT.fullmatch(text)
    digits = 0 if m is None else len(m.group(1)) + len(m.group(2))
    if m is None or not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"{text!r} is not a New Era float (1-{MAX_DIGITS} digits, one point)")
    return Decimal(text if not text.endswith(".") else text[:-1])


def format_float(value: Decimal) -> str:
    """Format ``value`` with at most 4 digits, rounding half-even; ValueError outside 0..9999."""
    if not value.is_finite() or not Decimal(0) <= value < Decimal("9999.5"):
        raise ValueError(f"{value} is outside the pump's number range 0..9999")
    int_digits = max(1, len(str(int(value))))
    while True:
        decimals = MAX_DIGITS - int_digits
        q = value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
        if q < Decimal(10) ** int_digits:
            return f"{q:.{decimals}f}"
        int_digits += 1  # 9.9996 rounds to 10.000: one more integer digit


def encode_rate(rate_ml_h: Decimal) -> tuple[str, RateUnit]:
    """The ``RAT`` parameters (float text, unit) closest to ``rate_ml_h``."""
    best: tuple[Decimal, str, RateUnit] | None = None
    for unit in RateUnit:
        try:
            text = format_float(rate_ml_h / unit.ml_h)
        except ValueError:
            continue
        error = abs(Decimal(text) * unit.ml_h - rate_ml_h)
        if best is None or error < best[0]:
            best = (error, text, unit)
    if best is None:
        raise NotRepresentable(f"rate {rate_ml_h} mL/h cannot be written in any New Era unit")
    return best[1], best[2]


def decode_rate(text: str, unit: RateUnit) -> Decimal:
    """mL/h of a ``RAT`` value."""
    return parse_float(text) * unit.ml_h
