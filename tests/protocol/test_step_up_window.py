"""STEP_UP_WINDOW (hepatorenal: at most +0.5 mg/h per 4 h, reject): the new dose may exceed the
lowest dose that ran at any moment of the preceding 4 h by at most 0.5 mg/h. The infusion
started at its earliest history entry; the time before it counts as dose 0, and a request
without history is a new start."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.builders import NOW, check, dose, make, rules, ts

HR = "hepatorenal"
MGH = "mg/h"
# 16 ug/mL: every dose with two decimals in mg/h is an exact 0.01 mL/h step (x 62.5 mL/h per
# mg/h), so rounding plays no part here.
CONC = (16, "ug/mL")


def h(minutes_ago: float, value: str) -> dict[str, Any]:
    return {"at": ts(minutes_ago), "dose": dose(value, MGH)}


def step_up(current: str | None, new: str, history: list[dict[str, Any]]) -> bool:
    req = make(profile=HR, current=current, new=new, history=history, conc=CONC)
    return "STEP_UP_WINDOW" in rules(check(req))


@pytest.mark.parametrize(
    ("history", "current", "new", "rejected"),
    [
        # started 2 h ago at 0.5: the window still holds 2 h at 0, so +0.5 is the most
        ([h(120, "0.5")], "0.5", "1.0", True),
        ([h(120, "0.5")], "0.5", "0.5", False),
        # started exactly 4 h ago: the whole window ran at 0.5
        ([h(240, "0.5")], "0.5", "1.0", False),
        ([h(300, "0.5")], "0.5", "1.0", False),
        ([h(300, "0.5")], "0.5", "1.01", True),
        # decrease then a bigger increase within the window
        ([h(400, "2.0"), h(60, "1.0")], "1.0", "2.0", True),
        ([h(400, "2.0"), h(60, "1.0")], "1.0", "1.5", False),
        # the decrease happened before the window: it no longer counts
        ([h(400, "1.0"), h(300, "2.0")], "2.0", "2.5", False),
        # a stop within the window counts as 0
        ([h(400, "1.0"), h(120, "0"), h(60, "1.0")], "1.0", "1.5", True),
        # no history at all: a new start (every moment of the window counts as 0)
        ([], "1.0", "1.2", True),
        ([], "1.0", "0.5", False),
        ([], None, "0.5", False),
        ([], None, "0.51", True),
    ],
)
def test_step_up_window_table(
    history: list[dict[str, Any]], current: str | None, new: str, rejected: bool
) -> None:
    """Boundary table of the step-up window (ends inclusive)."""
    assert step_up(current, new, history) is rejected


def test_first_increase_two_hours_after_the_start_is_rejected() -> None:
    """Regression: 0.5 mg/h started 2 h ago, 1.0 now: rejected, the finding names the rise
    from 0 and the 0.5 mg/h limit."""
    req = make(profile=HR, current="0.5", new="1.0", history=[h(120, "0.5")], conc=CONC)
    verdict = check(req)
    assert verdict.verdict == "reject"
    finding = next(f for f in verdict.findings if f.rule == "STEP_UP_WINDOW")
    assert "from 0 mg/h to 1 mg/h" in finding.message
    assert str(finding.limit) == "0.5 mg/h"
    assert str(finding.observed) == "1 mg/h"


def lowest_reference(history: list[tuple[float, Decimal]], current: Decimal | None) -> Decimal:
    """Independent model: sample the dose that ran every minute of the window (0 before the
    first entry) and take the minimum, together with the current dose."""
    entries = sorted(history)
    doses = []
    for minute in range(241):
        at = 240 - minute  # minutes ago
        running = Decimal(0)
        for ago, value in sorted(entries, key=lambda e: -e[0]):
            if ago >= at:
                running = value
        doses.append(running)
    if current is not None:
        doses.append(current)
    return min(doses)


@settings(max_examples=200, deadline=None)
@given(
    history=st.lists(
        st.tuples(
            st.integers(1, 480).map(float),
            st.integers(0, 300).map(lambda c: Decimal(c) / 100),
        ),
        max_size=5,
        unique_by=lambda e: e[0],
    ),
    new=st.integers(1, 300).map(lambda c: Decimal(c) / 100),
)
def test_step_up_matches_an_independent_minute_by_minute_model(
    history: list[tuple[float, Decimal]], new: Decimal
) -> None:
    """Property: STEP_UP_WINDOW fires exactly when the new dose rises above both the current
    dose and the model's lowest dose of the window by more than 0.5 mg/h."""
    current = min(history)[1] if history else None  # the latest entry (fewest minutes ago)
    hist = [{"at": ts(ago), "dose": dose(str(value), MGH)} for ago, value in history]
    lowest = lowest_reference(history, current)
    base = current if current is not None else Decimal(0)
    expected = new > base and new - lowest > Decimal("0.5")
    assert step_up(None if current is None else str(current), str(new), hist) is expected


def test_history_entries_after_now_are_ignored() -> None:
    """An entry stamped in the future does not lower or raise the window's minimum."""
    future = {"at": (NOW + timedelta(minutes=5)).isoformat(), "dose": dose("0", MGH)}
    assert not step_up("1.0", "1.5", [h(300, "1.0"), future])
