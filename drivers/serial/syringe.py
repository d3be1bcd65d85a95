"""Syringe geometry shared by the syringe-pump vendors."""

from __future__ import annotations

from decimal import Decimal

_PI = Decimal("3.14159265358979")


def area_ml_per_mm(diameter_mm: Decimal) -> Decimal:
    """mL displaced per mm of plunger travel in a syringe of this inside diameter."""
    radius = diameter_mm / 2
    return _PI * radius * radius / 1000
