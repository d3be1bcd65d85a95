"""PUMP_RANGE with and without a ``pump`` in the request: missing fields come from the library's
``pump_default`` (shipped 0.1-999.99 mL/h at 0.01), so an impossible rate is never accepted
just because the caller did not describe the pump."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LibraryError
from protocol.library import DEFAULT_LIBRARY_PATH, PumpDefault, load_library_bytes
from tests.protocol.builders import check, make, rules, shipped

LIBRARY_TEXT = DEFAULT_LIBRARY_PATH.read_bytes()


def test_shipped_library_declares_its_default_pump() -> None:
    """pump_default = 0.1-999.99 mL/h at 0.01 mL/h."""
    assert shipped().pump_default == PumpDefault(
        min_rate=Decimal("0.1"), max_rate=Decimal("999.99"), resolution=Decimal("0.01")
    )


@pytest.mark.parametrize("pump", [None, {}, {"resolution": 0.01}, {"min_rate": 0.1}])
def test_13500_ml_h_is_pump_range_with_or_without_a_pump(pump: dict[str, Any] | None) -> None:
    """13,500 mL/h is above the default maximum: PUMP_RANGE (reject), whatever is left out."""
    verdict = check(make(rate=13500, pump=pump))
    assert "PUMP_RANGE" in rules(verdict)
    assert verdict.verdict == "reject"
    finding = next(f for f in verdict.findings if f.rule == "PUMP_RANGE")
    assert finding.limit is not None
    assert finding.limit.value == Decimal("999.99")


@pytest.mark.parametrize(
    ("rate", "pump", "rejected"),
    [
        (999.99, None, False),
        (1000, None, True),
        (0.1, None, False),
        (0.09, None, True),
        (1200, {"max_rate": 1200}, False),  # the device's own maximum replaces the default
        (1200.01, {"max_rate": 1200}, True),
        (0.05, {"min_rate": 0.05}, False),
        (0.5, {"min_rate": 1}, True),
    ],
)
def test_pump_range_boundaries(rate: float, pump: dict[str, Any] | None, rejected: bool) -> None:
    """Inclusive bounds; each field of ``pump`` overrides only its own default."""
    verdict = check(make(rate=rate, pump=pump, new=None))
    assert ("PUMP_RANGE" in rules(verdict)) is rejected


def test_a_library_without_pump_default_assumes_the_same_pump() -> None:
    """A library file that omits pump_default gets 0.1-999.99 mL/h at 0.01 (not 'no limit')."""
    text = LIBRARY_TEXT.replace(
        b"pump_default = { min_rate = 0.1, max_rate = 999.99, resolution = 0.01 }", b"", 1
    )
    assert b"pump_default" not in text.split(b"[[profiles]]")[0].replace(b"# `pump", b"")
    lib = load_library_bytes(text, "no-pump-default")
    assert lib.pump_default == shipped().pump_default
    assert "PUMP_RANGE" in rules(check(make(rate=13500), lib))


def test_a_library_may_set_another_default_pump() -> None:
    """pump_default applies to requests without a pump, resolution included."""
    text = LIBRARY_TEXT.replace(
        b"pump_default = { min_rate = 0.1, max_rate = 999.99, resolution = 0.01 }",
        b"pump_default = { min_rate = 1, max_rate = 500, resolution = 0.1 }",
        1,
    )
    lib = load_library_bytes(text, "other-pump")
    assert "PUMP_RANGE" in rules(check(make(rate=600), lib))
    verdict = check(make(new="0.0601"), lib)  # exact 63.105 mL/h
    assert verdict.rate == Decimal("63.1")


def test_pump_default_is_validated() -> None:
    """A default pump with min above max is a LibraryError naming the field."""
    text = LIBRARY_TEXT.replace(
        b"pump_default = { min_rate = 0.1, max_rate = 999.99, resolution = 0.01 }",
        b"pump_default = { min_rate = 10, max_rate = 5 }",
        1,
    )
    with pytest.raises(LibraryError, match="pump_default"):
        load_library_bytes(text, "bad-pump")


@settings(max_examples=200)
@given(cents=st.integers(10, 99_999))
def test_every_rate_the_default_pump_can_run_passes(cents: int) -> None:
    """Property: without a pump, any rate on the 0.01 grid within 0.1-999.99 mL/h has no
    PUMP_RANGE finding, and is the verdict's rate unchanged."""
    rate = Decimal(cents) / 100
    verdict = check(make(rate=float(rate), conc=(64, "ug/mL")))
    assert "PUMP_RANGE" not in rules(verdict)
    assert verdict.rate == rate


@settings(max_examples=200)
@given(rate=st.decimals(min_value="999.991", max_value=1_000_000, places=3))
def test_every_rate_above_the_default_maximum_is_rejected(rate: Decimal) -> None:
    """Property: without a pump, any rate above 999.99 mL/h is PUMP_RANGE (reject)."""
    verdict = check(make(rate=float(rate), conc=(64, "ug/mL")))
    assert "PUMP_RANGE" in rules(verdict)
    assert verdict.verdict == "reject"
