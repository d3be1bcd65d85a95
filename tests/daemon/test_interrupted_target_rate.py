"""``InterruptedCommand.target_rate``: the rate an interrupted write was sending, read from its
recorded verdict, or None whenever the verdict names no numeric rate (never a guess)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.base.errors import PayloadError
from daemon.base.results import KeptOutcome
from daemon.journal.records import InterruptedCommand


def _interrupted(outcome: dict[str, Any]) -> InterruptedCommand:
    return InterruptedCommand(
        "c-1", "pump-1", KeptOutcome.from_json(outcome), {"action": "set_rate"}
    )


@given(st.floats(min_value=0, max_value=10_000, allow_nan=False) | st.integers(0, 10_000))
def test_a_recorded_numeric_rate_is_the_target_exactly(value: float) -> None:
    """Whatever number the verdict recorded comes back as the Decimal of its shortest repr."""
    outcome = {"phase": "accepted", "verdict": {"rate": {"value": value, "unit": "mL/h"}}}
    assert _interrupted(outcome).target_rate == Decimal(str(value))


@pytest.mark.parametrize(
    "outcome",
    [
        {"phase": "accepted"},
        {"phase": "accepted", "verdict": None},
        {"phase": "accepted", "verdict": {"verdict": "accept"}},
        {"phase": "accepted", "verdict": {"rate": None}},
        {"phase": "accepted", "verdict": {"rate": "5"}},
        {"phase": "accepted", "verdict": {"rate": {"unit": "mL/h"}}},
        {"phase": "accepted", "verdict": {"rate": {"value": "5"}}},
        {"phase": "accepted", "verdict": {"rate": {"value": True}}},
    ],
)
def test_a_verdict_without_a_numeric_rate_has_no_target(outcome: dict[str, Any]) -> None:
    """A start/stop/pause, an older row or a malformed one names no target: None."""
    assert _interrupted(outcome).target_rate is None


def test_a_verdict_that_is_not_an_object_is_a_malformed_row() -> None:
    """A recorded verdict that is not a JSON object is no verdict at all: the row cannot be read
    as a kept outcome (and names the field) rather than being taken as naming no target."""
    with pytest.raises(PayloadError, match=r"outcome\.verdict: expected an object"):
        _interrupted({"phase": "accepted", "verdict": ["rate"]})
