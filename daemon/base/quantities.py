"""The quantities our payloads carry (``{"value": 52.5, "unit": "mL/h"}``) as one typed value.

Results, events and states hold :class:`Quantity` values and turn them into JSON only when
they are published or journaled (:meth:`Quantity.to_json`); :meth:`Quantity.from_json` reads
one back from the journal and says which part is wrong. The value is kept as the float the
contract publishes: a quantity here is a report of a device or a verdict, never an input to a
calculation (those use ``Decimal`` in ``protocol/``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from daemon.base.errors import PayloadError
from daemon.base.payload import JsonObject

RATE_UNIT = "mL/h"
VOLUME_UNIT = "mL"


@dataclass(frozen=True, slots=True)
class Quantity:
    """A finite number with its UCUM-style unit, as published."""

    value: float
    unit: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"quantity value must be finite, got {self.value!r}")
        if not self.unit:
            raise ValueError("quantity unit must not be empty")

    @classmethod
    def rate(cls, rate_ml_h: Decimal | float) -> Quantity:
        """A pump rate in mL/h."""
        return cls(float(rate_ml_h), RATE_UNIT)

    @classmethod
    def volume(cls, volume_ml: Decimal | float) -> Quantity:
        """A volume in mL."""
        return cls(float(volume_ml), VOLUME_UNIT)

    def to_json(self) -> JsonObject:
        """``{"value": <number>, "unit": <str>}``."""
        return {"value": self.value, "unit": self.unit}

    @classmethod
    def from_json(cls, data: object, *, where: str = "quantity") -> Quantity:
        """Read ``{"value", "unit"}``; ``PayloadError`` naming ``where`` when it is not one."""
        if not isinstance(data, Mapping):
            raise PayloadError(f"{where}: expected an object with value and unit")
        value, unit = data.get("value"), data.get("unit")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{where}.value: expected a number, got {value!r}")
        if not isinstance(unit, str):
            raise PayloadError(f"{where}.unit: expected a string, got {unit!r}")
        return cls(float(value), unit)


def optional_json(quantity: Quantity | None) -> JsonObject | None:
    """``quantity.to_json()``, or None (published as ``null``) when there is none."""
    return None if quantity is None else quantity.to_json()


def optional_quantity(data: object, *, where: str) -> Quantity | None:
    """:meth:`Quantity.from_json`, with ``null`` read as None."""
    return None if data is None else Quantity.from_json(data, where=where)
