"""The verdict's rate is the rate the pump will run, rounded toward safety.

* the rate is on the pump's resolution grid, and the verdict's dose is the dose it delivers;
* the nearest step is taken unless it would move the delivered dose across a limit that the
  requested dose is on the other side of (hard first, then soft/start/step-up, then advisory);
* rounding never rescues a request (a requested dose beyond a hard limit stays rejected);
* round trip: the verdict's own rate sent back gives the same verdict and the same findings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.engine import evaluate
from protocol.request import parse_request
from protocol.verdict import Severity, Verdict
from tests.protocol.builders import check, dose, make, rules, shipped, ts
from tests.protocol.test_engine_properties import requests

D = Decimal
HR = "hepatorenal"
VP = "[USP'U]/min"


def hr_running(value: str) -> list[dict[str, Any]]:
    """Hepatorenal norepinephrine running at ``value`` mg/h since 5 h ago."""
    return [{"at": ts(300), "dose": dose(value, "mg/h")}]


def back_as_rate(req: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """The same request, asking for the verdict's own rate."""
    assert verdict.rate is not None
    return dict(req, requested={"rate": {"value": float(verdict.rate), "unit": "mL/h"}})


def non_info(verdict: Verdict) -> set[str]:
    return {f.rule for f in verdict.findings if f.severity is not Severity.INFO}


def test_hepatorenal_hard_max_rounds_down_never_up() -> None:
    """3 mg/h at 64 ug/mL is 46.875 mL/h: the pump runs 46.87 (2.99968 mg/h), not 46.88
    (3.00032 mg/h, above the 3 mg/h hard maximum), and the verdict says so."""
    req = make(profile=HR, current="2.5", new="3", conc=(64, "ug/mL"), history=hr_running("2.5"))
    verdict = check(req)
    assert verdict.rate == D("46.87")
    assert verdict.dose is not None
    assert verdict.dose.value == D("2.99968")
    assert verdict.verdict == "accept"
    again = check(back_as_rate(req, verdict))
    assert (again.verdict, again.rate, again.dose) == (verdict.verdict, verdict.rate, verdict.dose)


def test_pediatric_hard_max_rounds_down_so_the_rate_sent_back_is_not_hard_max() -> None:
    """Pediatric 5 ug/kg/min (the hard maximum) at 68.1 kg and 64 ug/mL is 319.21875 mL/h:
    319.21 mL/h, and 319.21 mL/h sent back is not HARD_MAX either."""
    req = make(profile="pediatric-icu", current="4.5", new="5", weight=68.1, conc=(64, "ug/mL"))
    verdict = check(req)
    assert verdict.rate == D("319.21")
    assert "HARD_MAX" not in rules(verdict)
    again = check(back_as_rate(req, verdict))
    assert "HARD_MAX" not in rules(again)
    assert non_info(again) == non_info(verdict)


def test_single_value_start_range_is_met_within_one_pump_step() -> None:
    """Pediatric start 0.1 ug/kg/min at 22 kg and 64 ug/mL is 2.0625 mL/h. The nearest step
    2.06 delivers 0.09988, below the soft minimum 0.1, so the pump runs 2.07 (0.100364): inside
    the soft range, and within one step of the single-value start dose (no START_RANGE)."""
    req = make(profile="pediatric-icu", current=None, new="0.1", weight=22, conc=(64, "ug/mL"))
    verdict = check(req)
    assert verdict.rate == D("2.07")
    assert verdict.dose is not None
    assert verdict.dose.value.quantize(D("1e-6")) == D("0.100364")
    assert rules(verdict) == set()
    assert rules(check(back_as_rate(req, verdict))) == set()


def test_conflicting_limits_keep_the_reject_ones_first() -> None:
    """Hepatorenal start 0.5 mg/h at 64 ug/mL is 7.8125 mL/h. 7.82 (0.50048 mg/h) would rise
    more than the 0.5 mg/h step from 0 (STEP_UP_WINDOW, reject); 7.81 (0.49984 mg/h) is below
    the soft minimum (confirm): the reject-level limit is kept, the verdict asks to confirm."""
    req = make(profile=HR, current=None, new="0.5", conc=(64, "ug/mL"), history=[])
    verdict = check(req)
    assert verdict.rate == D("7.81")
    assert rules(verdict) == {"SOFT_MIN"}
    assert verdict.verdict == "confirm"
    assert rules(check(back_as_rate(req, verdict))) == {"SOFT_MIN"}


def test_rounding_never_rescues_a_hard_max() -> None:
    """Vasopressin 0.04004 [USP'U]/min at 1 [USP'U]/mL (2.4024 mL/h) is HARD_MAX even though
    2.40 mL/h would deliver exactly 0.04; the verdict's rate stays on the rejected side."""
    req = make(
        drug="vasopressin",
        unit=VP,
        current="0.03",
        new="0.04004",
        conc=(1, "[USP'U]/mL"),
        diluent="NS",
        others=[{"drug": "norepinephrine", "dose": dose("0.2", "ug/kg/min")}],
    )
    verdict = check(req)
    assert verdict.verdict == "reject"
    hard = next(f for f in verdict.findings if f.rule == "HARD_MAX")
    assert hard.limit is not None
    assert hard.limit.value == D("0.04")
    assert hard.observed is not None
    assert hard.observed.value == D("0.04004")  # the dose asked for is the one named
    assert "0.04004 [USP'U]/min is above the hard maximum" in hard.message
    assert verdict.rate == D("2.41")
    assert check(back_as_rate(req, verdict)).verdict == "reject"


def test_the_hard_max_itself_is_accepted_when_a_step_delivers_it_exactly() -> None:
    """0.04 [USP'U]/min at 1 [USP'U]/mL is exactly 2.40 mL/h: no rounding, no finding."""
    req = make(
        drug="vasopressin",
        unit=VP,
        current="0.04",
        new="0.04",
        conc=(1, "[USP'U]/mL"),
        diluent="NS",
        others=[{"drug": "norepinephrine", "dose": dose("0.2", "ug/kg/min")}],
    )
    verdict = check(req)
    assert verdict.rate == D("2.4")
    assert "HARD_MAX" not in rules(verdict)


@pytest.mark.parametrize(
    ("resolution", "new", "rate"),
    [
        ("0.01", "0.0601", "63.1"),  # exact 63.105: nearest 63.11 keeps every side
        ("0.1", "0.0601", "63.1"),  # half a step: halves go up unless a limit says otherwise
        ("1", "0.0601", "63"),
        ("0.01", "1.0", "1050"),  # on the grid: unchanged
    ],
)
def test_rate_is_on_the_device_resolution_grid(resolution: str, new: str, rate: str) -> None:
    """The rate is a multiple of the device's resolution (``pump.resolution``)."""
    verdict = check(make(new=new, pump={"resolution": float(resolution), "max_rate": 2000}))
    assert verdict.rate is not None
    assert verdict.rate == D(rate) or verdict.rate % D(resolution) == 0
    assert verdict.rate % D(resolution) == 0


def test_soft_max_boundary_rounds_toward_the_inside() -> None:
    """Adult-icu soft max 1.0 ug/kg/min at 77 kg and 64 ug/mL is 72.1875 mL/h: the nearest
    step 72.19 would deliver 1.0000346 (SOFT_MAX); 72.18 keeps the dose inside."""
    req = make(current="0.9", new="1.0", weight=77, conc=(64, "ug/mL"))
    verdict = check(req)
    assert verdict.rate == D("72.18")
    assert "SOFT_MAX" not in rules(verdict)
    assert verdict.verdict == "accept"


def test_a_dose_outside_the_soft_range_stays_outside() -> None:
    """Requested just above soft max (1.00003 at 77 kg, 64 ug/mL = 72.1896 mL/h): the nearest
    step 72.19 stays above, so SOFT_MAX is judged on the delivered dose and kept."""
    verdict = check(make(current="0.9", new="1.00003", weight=77, conc=(64, "ug/mL")))
    assert verdict.rate == D("72.19")
    assert "SOFT_MAX" in rules(verdict)


def test_step_up_window_limit_is_kept_by_rounding() -> None:
    """Hepatorenal 1.0 mg/h for 5 h: +0.5 -> 1.5 mg/h at 64 ug/mL is 23.4375 mL/h; 23.44
    would be 1.50016 mg/h (STEP_UP_WINDOW, reject), so the pump runs 23.43."""
    req = make(profile=HR, current="1.0", new="1.5", conc=(64, "ug/mL"), history=hr_running("1.0"))
    verdict = check(req)
    assert verdict.rate == D("23.43")
    assert "STEP_UP_WINDOW" not in rules(verdict)


def test_a_positive_request_is_never_rounded_to_a_stop() -> None:
    """A rate below half a step is not rounded to 0 (a stop): one step, and PUMP_RANGE."""
    verdict = check(make(rate=0.004))
    assert verdict.rate == D("0.01")
    assert "PUMP_RANGE" in rules(verdict)
    assert verdict.verdict == "reject"
    tiny = check(make(new="0.0001", conc=(64, "ug/mL"), pump={"min_rate": 0, "resolution": 1}))
    assert tiny.rate == 1
    assert "PUMP_RANGE" in rules(tiny)


def test_verdict_dose_is_the_delivered_dose_and_findings_judge_it() -> None:
    """The verdict's dose is what the rounded rate delivers; SOFT_MAX's observed is that dose."""
    verdict = check(make(new="1.00003", current="0.9", weight=77, conc=(64, "ug/mL")))
    assert verdict.dose is not None
    assert verdict.rate is not None
    delivered = verdict.rate * 64 / 60 / 77
    assert abs(verdict.dose.value - delivered) < D("1e-20")
    soft = next(f for f in verdict.findings if f.rule == "SOFT_MAX")
    assert soft.observed is not None
    assert soft.observed.value == verdict.dose.value


def _crossed_a_reject_limit(verdict: Verdict) -> bool:
    """No step kept every reject-tier limit: a HARD_* finding names the requested dose while
    the delivered one is inside, or PUMP_RANGE names the exact rate while the pump's is inside."""
    for finding in verdict.findings:
        if finding.observed is None:
            continue
        if finding.rule.startswith("HARD_") and verdict.dose is not None:
            if finding.observed.value != verdict.dose.value:
                return True
        elif finding.rule == "PUMP_RANGE" and finding.observed.value != verdict.rate:
            return True
    return False


def _below_one_step(req: dict[str, Any], verdict: Verdict) -> bool:
    """A request below one pump step has no step on its own side (0 would be a stop)."""
    pump = req.get("pump") or {}
    resolution = D(str(pump.get("resolution", 0.01)))
    rate = req["requested"].get("rate")
    if rate is not None:
        return D(str(rate["value"])) < resolution
    return verdict.rate == resolution


@settings(max_examples=200, deadline=None)
@given(req=requests())
def test_round_trip_sending_the_verdict_rate_back_gives_the_same_verdict(
    req: dict[str, Any],
) -> None:
    """Property: for any request with a positive rate, sending the verdict's own rate back as
    ``requested.rate`` gives the same verdict, rate and dose, and the same non-info rule ids
    unless no pump step could keep every reject-tier limit (then both are rejected)."""
    first = evaluate(shipped(), parse_request(req))
    assume(first.rate is not None and first.rate > 0)
    assume(not _below_one_step(req, first))
    assume(first.rate <= 1_000_000)  # a request cannot ask for more (the field's cap)
    again = evaluate(shipped(), parse_request(back_as_rate(req, first)))
    assert again.verdict == first.verdict
    assert again.rate == first.rate
    assert again.dose == first.dose
    if _crossed_a_reject_limit(first):
        assert first.verdict == again.verdict == "reject"
    else:
        assert non_info(again) == non_info(first)


def test_a_dose_on_a_pump_step_gives_the_dose_its_rate_gives() -> None:
    """1 mg/h of norepinephrine at 4 ug/mL for 2 kg is exactly 250 mL/h, a pump step; the
    verdict's dose is computed from that rate, so asking for the rate gives the same Decimal
    (Hypothesis found a last-digit difference, 8.33...333 against 8.33...335 ug/kg/min, when
    the dose was taken as asked)."""
    req = make(
        new="1.0", unit="mg/h", profile="anaphylaxis", conc=(4, "ug/mL"), weight=2, current=None
    )
    first = check(req)
    assert first.rate == D(250)
    again = check(back_as_rate(req, first))
    assert (again.verdict, again.rate, again.dose) == (first.verdict, first.rate, first.dose)


def test_a_hard_max_dose_below_the_pump_minimum_is_rejected_both_ways() -> None:
    """Norepinephrine 101 ug/min at 64 mg/mL is 0.0947 mL/h: above the hard maximum by dose,
    below the 0.1 mL/h pump minimum by rate, and one 0.01 mL/h step is 10.7 ug/min, so no step
    keeps both limits. The request is rejected (HARD_MAX, PUMP_RANGE), and so is its rate sent
    back: the round trip never turns a rejection into something a pump could receive."""
    req = make(new="101", unit="ug/min", profile="adult-label", conc=(64, "mg/mL"), current=None)
    first = check(req)
    assert first.verdict == "reject"
    assert {"HARD_MAX", "PUMP_RANGE"} <= rules(first)
    assert _crossed_a_reject_limit(first)
    again = check(back_as_rate(req, first))
    assert again.verdict == "reject"
    assert again.rate == first.rate


ENTRIES = [(p.id, d.drug) for p in shipped().profiles for d in p.drugs]


@settings(max_examples=300, deadline=None)
@given(
    entry=st.sampled_from(ENTRIES),
    t=st.decimals(min_value=0, max_value=1, places=7),
    weight=st.decimals(min_value=31, max_value=79, places=1),
    conc_index=st.integers(0, 3),
)
def test_a_dose_inside_the_hard_range_is_delivered_inside_it(
    entry: tuple[str, str], t: Decimal, weight: Decimal, conc_index: int
) -> None:
    """Property: a requested dose within [hard.min, hard.max] is never delivered outside it
    (no HARD_* finding), and the rate is on the 0.01 mL/h grid."""
    profile, drug = entry
    lib_entry = shipped().drug(profile, drug)
    assert lib_entry is not None
    hard = lib_entry.hard
    value = hard.min + (hard.max - hard.min) * t
    assume(value > 0)
    std = lib_entry.concentrations[conc_index % len(lib_entry.concentrations)]
    req = make(
        profile=profile,
        drug=drug,
        unit=lib_entry.dose_unit,
        new=str(value),
        current=None,
        weight=float(weight),
        conc=(float(std.value), std.unit),
        diluent=(lib_entry.diluents.allowed or ("D5W",))[0],
        history=[],
        pump={"max_rate": 100_000},
    )
    verdict = check(req)
    assert not rules(verdict) & {"HARD_MAX", "HARD_MIN"}
    assert verdict.rate is not None
    assert verdict.rate % D("0.01") == 0


@pytest.mark.parametrize("conc", [4, 16, 32, 64])
@pytest.mark.parametrize(
    ("profile", "hard_max", "weight", "current"),
    [("pediatric-icu", "5", 68.1, "4.5"), ("hepatorenal", "3", 70, "2.5")],
)
def test_the_hard_maximum_at_every_standard_bag_is_delivered_at_or_below_it(
    profile: str, hard_max: str, weight: float, current: str, conc: int
) -> None:
    """Asking for exactly the hard maximum never yields a rate that delivers more, and that
    rate sent back is not HARD_MAX (PUMP_RANGE may apply where the bag is too weak)."""
    req = make(
        profile=profile,
        current=current,
        new=hard_max,
        weight=weight,
        conc=(conc, "ug/mL"),
    )  # running at ``current`` since 5 h ago (the builder's default history)
    verdict = check(req)
    assert verdict.dose is not None
    assert verdict.dose.value <= D(hard_max)
    assert "HARD_MAX" not in rules(verdict)
    assert "HARD_MAX" not in rules(check(back_as_rate(req, verdict)))
