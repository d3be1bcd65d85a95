"""Time-window rules: TITRATION_INTERVAL, STEP_UP_WINDOW (hepatorenal) and ABRUPT_STOP."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.library import _span_at_least
from protocol.verdict import Severity
from tests.protocol.builders import PROFILES, check, dose, make, rules, shipped, ts


def hist(minutes_ago: float, value: str, unit: str) -> dict[str, object]:
    return {"at": ts(minutes_ago), "dose": dose(value, unit)}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("minutes", "advised"), [(5, False), (4.99, True), (5.01, False)])
def test_titration_interval(profile: str, minutes: float, advised: bool) -> None:
    """A change sooner than 5 min after the last one is an advisory; at 5 min it is fine."""
    unit = make(profile=profile)["current"]["unit"]
    cur = make(profile=profile)["current"]["value"]
    req = make(profile=profile, history=[hist(300, str(cur), unit), hist(minutes, str(cur), unit)])
    verdict = check(req)
    assert ("TITRATION_INTERVAL" in rules(verdict)) is advised
    if advised:
        finding = next(f for f in verdict.findings if f.rule == "TITRATION_INTERVAL")
        assert finding.severity is Severity.ADVISORY
        assert verdict.verdict == "accept"


def test_titration_interval_uses_latest_entry_whatever_the_order() -> None:
    """History order does not matter: the latest change is found by time."""
    h = [hist(2, "0.05", "ug/kg/min"), hist(90, "0.04", "ug/kg/min")]
    assert "TITRATION_INTERVAL" in rules(check(make(history=h)))
    assert "TITRATION_INTERVAL" in rules(check(make(history=list(reversed(h)))))


@given(
    minutes=st.decimals(min_value=0, max_value=Decimal("1e12"), allow_nan=False, places=8)
    | st.decimals(min_value=0, max_value=Decimal("1e12"), allow_nan=False),
    seconds=st.integers(-(10**10), 10**11),
)
def test_titration_interval_as_a_timedelta_is_exact(minutes: Decimal, seconds: int) -> None:
    """The rule compares a whole-second elapsed time with the library interval as timedeltas
    (DrugFacts.titration_interval): the same answer as the Decimal comparison it replaces."""
    threshold = _span_at_least(minutes)
    assert threshold is not None
    assert (timedelta(seconds=seconds) >= threshold) is (Decimal(seconds) >= minutes * 60)


def test_titration_interval_beyond_any_timedelta_is_never_reached() -> None:
    assert _span_at_least(Decimal("1e30")) == timedelta.max
    assert _span_at_least(None) is None


HR = "hepatorenal"
MGH = "mg/h"


@pytest.mark.parametrize(
    ("new", "rejected"), [("1.5", False), ("1.4999", False), ("1.5001", True), ("2.0", True)]
)
def test_step_up_window_from_dose_in_effect_at_window_start(new: str, rejected: bool) -> None:
    """Hepatorenal: 1.0 mg/h since 5 h ago; +0.5 mg/h is allowed, more is rejected."""
    req = make(profile=HR, current="1.0", new=new, history=[hist(300, "1.0", MGH)])
    verdict = check(req)
    assert ("STEP_UP_WINDOW" in rules(verdict)) is rejected
    if rejected:
        assert verdict.verdict == "reject"


def test_step_up_window_counts_steps_within_the_window() -> None:
    """0.5 (since 5 h ago) -> 1.0 (1 h ago) -> 1.5 now is +1.0 within 4 h: rejected."""
    h = [hist(300, "0.5", MGH), hist(60, "1.0", MGH)]
    verdict = check(make(profile=HR, current="1.0", new="1.5", history=h))
    assert "STEP_UP_WINDOW" in rules(verdict)
    finding = next(f for f in verdict.findings if f.rule == "STEP_UP_WINDOW")
    assert finding.observed is not None
    assert str(finding.observed) == "1 mg/h"
    assert finding.limit is not None
    assert str(finding.limit) == "0.5 mg/h"


def test_step_up_window_boundary_is_the_window_start() -> None:
    """A change exactly 4 h ago is the dose in effect at the window start, not before it."""
    h = [hist(240.01, "0.5", MGH), hist(240, "1.0", MGH)]
    assert "STEP_UP_WINDOW" not in rules(
        check(make(profile=HR, current="1.0", new="1.5", history=h))
    )
    h = [hist(240, "0.5", MGH), hist(239.99, "1.0", MGH)]
    assert "STEP_UP_WINDOW" in rules(check(make(profile=HR, current="1.0", new="1.5", history=h)))


def test_step_up_window_new_infusion_counts_from_zero() -> None:
    """Starting hepatorenal norepinephrine at 0.5 mg/h is allowed; at 0.6 it is not."""
    assert "STEP_UP_WINDOW" not in rules(check(make(profile=HR, current=None, new="0.5")))
    assert "STEP_UP_WINDOW" in rules(check(make(profile=HR, current=None, new="0.6")))


def test_step_up_window_ignores_decreases_and_other_profiles() -> None:
    """Lowering is never a step up; adult-icu has no step-up rule."""
    h = [hist(60, "0.5", MGH)]
    assert "STEP_UP_WINDOW" not in rules(check(make(profile=HR, current="2", new="1.0", history=h)))
    big = make(current="0.05", new="0.9", history=[hist(30, "0.02", "ug/kg/min")])
    assert "STEP_UP_WINDOW" not in rules(check(big))


@pytest.mark.parametrize("profile", PROFILES)
def test_abrupt_stop(profile: str) -> None:
    """From above stop_from_above: a stop or a drop > 50% needs confirm; 50% exactly does not."""
    drug = shipped().drug(profile, "norepinephrine")
    assert drug is not None
    assert drug.taper is not None
    edge = drug.taper.stop_from_above
    high = edge * 2
    assert "ABRUPT_STOP" in rules(check(make(profile=profile, current=str(high), stop=True)))
    assert "ABRUPT_STOP" not in rules(check(make(profile=profile, current=str(edge), stop=True)))
    just_above = edge * (1 + Decimal("1e-6"))
    assert "ABRUPT_STOP" in rules(check(make(profile=profile, current=str(just_above), stop=True)))
    half = high / 2
    assert "ABRUPT_STOP" not in rules(check(make(profile=profile, current=str(high), new=half)))
    more = half * Decimal("0.999")
    verdict = check(make(profile=profile, current=str(high), new=more))
    assert "ABRUPT_STOP" in rules(verdict)
    assert verdict.verdict in {"confirm", "reject"}


def test_stop_yields_rate_zero() -> None:
    """A stop request yields rate 0 and dose 0 in the drug's unit."""
    verdict = check(make(current="0.03", stop=True))
    out = verdict.to_dict()
    assert out["rate"] == {"value": 0.0, "unit": "mL/h"}
    assert out["dose"] == {"value": 0.0, "unit": "ug/kg/min"}
    assert verdict.verdict == "accept"


def test_stop_is_never_rejected() -> None:
    """A stop goes through even with a forbidden diluent, a bad line, an odd weight, an
    unknown unit or drug: rejecting it would keep the infusion running."""
    messy = make(
        current="0.04",
        stop=True,
        diluent="NS",
        line_shares=["alkaline"],
        weight=10,
        conc=(500, "ug/mL"),
        route="peripheral",
    )
    verdict = check(messy)
    assert verdict.verdict == "accept"
    assert verdict.rate == 0
    assert verdict.findings == ()
    unknown = check(make(drug="milrinone", stop=True))
    assert unknown.verdict == "accept"
    assert unknown.rate == 0
    assert [(f.rule, f.severity) for f in unknown.findings] == [("UNKNOWN_DRUG", Severity.ADVISORY)]
    odd_unit = make(stop=True)
    odd_unit["current"] = {"value": 3, "unit": "furlongs"}
    assert check(odd_unit).verdict == "accept"
    # The taper rule still applies to a stop: confirm, not reject.
    assert check(make(current="0.2", stop=True, diluent="NS")).verdict == "confirm"
