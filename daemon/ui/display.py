"""Numbers and units as people read them on the bedside displays (``watch`` and the dashboard).

The wire keeps full precision and UCUM codes (``0.066667``, ``[USP'U]/min``); a screen shows
three significant digits and the unit as printed on a drug label (``0.0667 ug/kg/min``,
``0.03 U/min``). The dashboard's ``unitLabel``/``fmtNum`` in ``daemon/ui/web/app.js`` apply the same
two rules (a test keeps the tables equal). A unit is never shortened or cut: a dose is shown with
its full unit or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

from daemon.base.quantities import Quantity

#: UCUM code -> the label a clinician reads (applied inside compound units: ``[USP'U]/min``)
UNIT_LABELS = {"[USP'U]": "U", "mm[Hg]": "mmHg"}
SIGNIFICANT = 3


def display_unit(unit: str) -> str:
    """``[USP'U]/min`` -> ``U/min``, ``mm[Hg]`` -> ``mmHg``; other units unchanged."""
    for code, label in UNIT_LABELS.items():
        unit = unit.replace(code, label)
    return unit


def human_number(value: float, significant: int = SIGNIFICANT) -> str:
    """``value`` to ``significant`` digits (but never fewer than its whole part), plain
    notation, no trailing zeros, halves rounded up: ``0.066667`` -> ``0.0667``, ``52.5`` ->
    ``52.5``, ``1234.5`` -> ``1235``, ``0.05`` -> ``0.05``.
    Non-finite values are ``?`` (they never reach a pump; a display must not crash on them)."""
    if not math.isfinite(value):
        return "?"
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    quantum = Decimal(1).scaleb(min(exponent - significant + 1, 0))
    rounded = Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP)
    text = f"{rounded:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def human_quantity(quantity: object, *, decimals: int | None = None) -> str | None:
    """``{"value", "unit"}`` as ``0.0667 ug/kg/min`` (``decimals``: fixed places instead of
    significant digits, e.g. rates ``52.50 mL/h``); None when it is not a quantity. Reads a
    payload's object as received (a missing unit shows the number alone)."""
    if not isinstance(quantity, Mapping):
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    unit = quantity.get("unit")
    return _shown(value, unit if isinstance(unit, str) else "", decimals)


def quantity_text(quantity: Quantity, *, decimals: int | None = None) -> str:
    """A typed :class:`Quantity` shown as :func:`human_quantity` shows its JSON."""
    return _shown(quantity.value, quantity.unit, decimals)


def _shown(value: float, unit: str, decimals: int | None) -> str:
    number = f"{value:.{decimals}f}" if decimals is not None else human_number(float(value))
    return f"{number} {display_unit(unit)}" if unit else number
