"""Numbers, units and ages as people read them (daemon.display, daemon.timefmt.human_age)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.display import UNIT_LABELS, display_unit, human_number, human_quantity
from daemon.timefmt import human_age

APP_JS = Path(__file__).resolve().parents[2] / "daemon" / "web" / "app.js"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.066667, "0.0667"),
        (0.05, "0.05"),
        (52.5, "52.5"),
        (9.0, "9"),
        (1234.5, "1235"),
        (999.96, "1000"),
        (0.00012345, "0.000123"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.1 + 0.2, "0.3"),
        (math.nan, "?"),
        (math.inf, "?"),
    ],
)
def test_human_number_examples(value: float, shown: str) -> None:
    """Three significant digits, never fewer than the whole part, no trailing zeros."""
    assert human_number(value) == shown


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_human_number_is_close_and_plain(value: float) -> None:
    """Within half a unit of the third significant digit (or of 1 for big numbers), never in
    scientific notation, never with a trailing zero after the point."""
    shown = human_number(value)
    assert re.fullmatch(r"\d+(\.\d*[1-9])?", shown), shown
    error = abs(Decimal(shown) - Decimal(repr(value)))
    allowed = max(Decimal(repr(value)) * Decimal("0.005"), Decimal(0)) if value < 100 else 1
    assert error <= allowed


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_human_number_keeps_the_sign(value: float) -> None:
    assert human_number(-value) == "-" + human_number(value)


@pytest.mark.parametrize(
    ("unit", "label"),
    [
        ("[USP'U]/min", "U/min"),
        ("[USP'U]/h", "U/h"),
        ("mm[Hg]", "mmHg"),
        ("ug/kg/min", "ug/kg/min"),
        ("mL/h", "mL/h"),
    ],
)
def test_display_unit_is_the_label_unit(unit: str, label: str) -> None:
    assert display_unit(unit) == label


def test_the_dashboard_uses_the_same_unit_labels() -> None:
    """app.js's UNIT_LABELS is this table: the page and watch show one unit the same way."""
    match = re.search(r"const UNIT_LABELS = \{(.*?)\};", APP_JS.read_text())
    assert match is not None
    pairs = dict(re.findall(r'"([^"]+)":\s*"([^"]+)"', match[1]))
    assert pairs == UNIT_LABELS


def test_human_quantity() -> None:
    """Rounded value and label unit; fixed decimals on request; None for a non-quantity."""
    assert human_quantity({"value": 0.066667, "unit": "ug/kg/min"}) == "0.0667 ug/kg/min"
    assert human_quantity({"value": 0.03, "unit": "[USP'U]/min"}) == "0.03 U/min"
    assert human_quantity({"value": 52.5, "unit": "mL/h"}, decimals=2) == "52.50 mL/h"
    assert human_quantity({"value": True, "unit": "mL/h"}) is None
    assert human_quantity(None) is None
    assert human_quantity({"unit": "mL/h"}) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "just now"),
        (0.4, "just now"),
        (11.04, "11 s ago"),
        (59.9, "59 s ago"),
        (60, "1 min ago"),
        (11.039, "11 s ago"),
        (185, "3 min ago"),
        (7_300, "2 h ago"),
        (200_000, "2 d ago"),
    ],
)
def test_human_age(seconds: float, text: str) -> None:
    """Whole seconds, minutes, hours or days: never "0.183983 min ago"."""
    assert human_age(seconds) == text
