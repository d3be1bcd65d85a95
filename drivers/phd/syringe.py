"""Syringe geometry -> rate range and resolution of a PHD ULTRA (shared by driver and simulator).

The delivered rate is the syringe's inside cross-section times the pusher speed. Assumption
(documented, from Harvard's published PHD ULTRA specification, not in the manual pages at
hand): pusher travel rate 0.18 um/min to 190.8 mm/min, i.e. 0.0108 to 11448 mm/h. Valid
diameters 0.1 to 45.0 mm (up to a 140 mL syringe).

Resolution: rates are written in ml/hr with at most 2 decimals (0.01 mL/h) for syringes of
4.0 mm and more, with 4 decimals (0.0001 mL/h) for smaller ones, whose whole range can lie
below 0.01 mL/h.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from drivers.serial.syringe import area_ml_per_mm

MIN_DIAMETER_MM = Decimal("0.1")
MAX_DIAMETER_MM = Decimal("45.0")
MIN_PUSHER_MM_H = Decimal("0.0108")
MAX_PUSHER_MM_H = Decimal(11448)
FINE_BELOW_MM = Decimal("4.0")


def resolution(diameter_mm: Decimal) -> Decimal:
    """The rate step (mL/h) the driver writes for this syringe."""
    return Decimal("0.0001") if diameter_mm < FINE_BELOW_MM else Decimal("0.01")


def rate_limits(diameter_mm: Decimal) -> tuple[Decimal, Decimal]:
    """(min, max) rate in mL/h for this diameter, on the resolution grid (min up, max down)."""
    area = area_ml_per_mm(diameter_mm)
    step = resolution(diameter_mm)
    low = (area * MIN_PUSHER_MM_H).quantize(step, rounding=ROUND_CEILING)
    high = (area * MAX_PUSHER_MM_H).quantize(step, rounding=ROUND_FLOOR)
    return low, high


def valid_diameter(diameter_mm: Decimal) -> bool:
    return MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM
