"""Syringe geometry -> rate limits and volume units (shared by driver and simulator).

A syringe pump moves a plunger; the delivered rate is the syringe's inside cross-section times
the plunger speed, so the pump's rate range depends on the programmed diameter (``DIA``).

Assumptions (documented, approximate): the plunger speed range is derived from the published
NE-1000 limits -- about 1699 mL/h maximum with a 26.59 mm (BD 60 mL) syringe and 0.73 uL/h
minimum with a 4.699 mm (BD 1 mL) syringe -- giving 0.0421 to 3060 mm/h. Volumes are counted
in uL for diameters up to 14.0 mm and in mL above, as on the device's default. The valid
diameter range is 0.1 to 50.0 mm.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from drivers.newera.numbers import VolumeUnit
from drivers.serial.syringe import area_ml_per_mm

MIN_DIAMETER_MM = Decimal("0.1")
MAX_DIAMETER_MM = Decimal("50.0")
MIN_PLUNGER_MM_H = Decimal("0.0421")
MAX_PLUNGER_MM_H = Decimal(3060)
UL_DIAMETER_MAX_MM = Decimal("14.0")


def rate_limits(diameter_mm: Decimal) -> tuple[Decimal, Decimal]:
    """(min, max) rate in mL/h for this diameter; min rounded up, max down."""
    area = area_ml_per_mm(diameter_mm)
    low = (area * MIN_PLUNGER_MM_H).quantize(Decimal("0.0001"), rounding=ROUND_CEILING)
    high = (area * MAX_PLUNGER_MM_H).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
    return low, high


def volume_unit(diameter_mm: Decimal) -> VolumeUnit:
    """The unit of ``VOL`` and ``DIS`` for this diameter."""
    return VolumeUnit.UL if diameter_mm <= UL_DIAMETER_MAX_MM else VolumeUnit.ML


def valid_diameter(diameter_mm: Decimal) -> bool:
    return MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM
