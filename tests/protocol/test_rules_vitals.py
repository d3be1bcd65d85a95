"""Vitals-aware rules: MAP targets (with chronic hypertension), SBP ceiling, escalation
advisory and stale vitals, at and around every boundary, in every profile."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from protocol.verdict import Severity
from tests.protocol.builders import PROFILES, check, dose, make, rules, vitals

WITH_TARGETS = [p for p in PROFILES if p != "pediatric-icu"]


def up(profile: str, **kw: Any) -> dict[str, Any]:
    """An increase of the running norepinephrine dose (default 1.2x)."""
    return make(profile=profile, **kw)


def down(profile: str, **kw: Any) -> dict[str, Any]:
    """A decrease to 0.9x the running dose."""
    cur = Decimal(str(make(profile=profile)["current"]["value"]))
    return make(profile=profile, new=cur * Decimal("0.9"), **kw)


@pytest.mark.parametrize("profile", WITH_TARGETS)
@pytest.mark.parametrize(("map_", "flagged"), [(85, False), (84.9, False), (85.1, True)])
def test_map_above_target_on_increase(profile: str, map_: float, flagged: bool) -> None:
    """Increasing while MAP > 85 needs confirmation; MAP 85 is on target."""
    verdict = check(up(profile, vitals_=vitals(map_=map_)))
    assert ("MAP_ABOVE_TARGET" in rules(verdict)) is flagged
    if flagged:
        assert verdict.verdict == "confirm"


@pytest.mark.parametrize("profile", WITH_TARGETS)
def test_map_above_target_not_on_decrease(profile: str) -> None:
    """Lowering with a high MAP is what should happen: no finding."""
    assert "MAP_ABOVE_TARGET" not in rules(check(down(profile, vitals_=vitals(map_=100))))


@pytest.mark.parametrize("profile", WITH_TARGETS)
@pytest.mark.parametrize(
    ("map_", "chronic", "flagged"),
    [
        (65, False, False),
        (65.1, False, False),
        (64.9, False, True),
        (70, True, False),
        (69.9, True, True),
        (67, False, False),
        (67, True, True),
    ],
)
def test_map_below_target_on_decrease(
    profile: str, map_: float, chronic: bool, flagged: bool
) -> None:
    """Lowering while MAP < 65 (< 70 with chronic hypertension) needs confirmation."""
    req = down(profile, vitals_=vitals(map_=map_), patient={"chronic_hypertension": chronic})
    assert ("MAP_BELOW_TARGET" in rules(check(req))) is flagged


@pytest.mark.parametrize("profile", WITH_TARGETS)
def test_map_below_target_not_on_increase(profile: str) -> None:
    """Raising with a low MAP is not MAP_BELOW_TARGET."""
    assert "MAP_BELOW_TARGET" not in rules(check(up(profile, vitals_=vitals(map_=50))))


@pytest.mark.parametrize("profile", WITH_TARGETS)
@pytest.mark.parametrize(("sbp", "flagged"), [(120, False), (119.9, False), (120.1, True)])
def test_sbp_ceiling(profile: str, sbp: float, flagged: bool) -> None:
    """Baseline SBP 160: increasing while SBP > 120 (160 - 40) needs confirmation."""
    req = up(profile, vitals_=vitals(sbp=sbp), patient={"baseline_sbp": 160})
    assert ("SBP_CEILING" in rules(check(req))) is flagged


def test_sbp_ceiling_needs_a_baseline() -> None:
    """Without a baseline SBP there is no ceiling."""
    assert "SBP_CEILING" not in rules(check(make(vitals_=vitals(sbp=200))))


def test_pediatric_profile_has_no_map_targets() -> None:
    """The reference gives no pediatric MAP targets: MAP/SBP rules stay silent there."""
    hi = check(up("pediatric-icu", vitals_=vitals(map_=120), patient={"baseline_sbp": 100}))
    lo = check(down("pediatric-icu", vitals_=vitals(map_=30)))
    assert not rules(hi) & {"MAP_ABOVE_TARGET", "SBP_CEILING"}
    assert "MAP_BELOW_TARGET" not in rules(lo)


@pytest.mark.parametrize(
    ("new", "map_", "others", "advised"),
    [
        ("0.1", 64.9, [], True),
        ("0.1", 65, [], False),
        ("0.0999", 60, [], False),
        ("0.25", 50, [], True),
        ("0.2", 60, [{"drug": "vasopressin", "dose": dose("0.03", "[USP'U]/min")}], False),
    ],
)
def test_escalation_advisory(new: str, map_: float, others: list[Any], advised: bool) -> None:
    """Norepinephrine >= 0.1 ug/kg/min with MAP < 65: advise vasopressin 0.03 [USP'U]/min."""
    verdict = check(make(new=new, current="0.08", vitals_=vitals(map_=map_), others=others))
    assert ("ESCALATION_ADVISORY" in rules(verdict)) is advised
    if advised:
        finding = next(f for f in verdict.findings if f.rule == "ESCALATION_ADVISORY")
        assert finding.severity is Severity.ADVISORY
        assert "vasopressin 0.03 [USP'U]/min" in finding.message


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("minutes", "stale"), [(15, False), (14.9, False), (15.02, True)])
def test_vitals_stale(profile: str, minutes: float, stale: bool) -> None:
    """No BP within 15 min of now: VITALS_STALE advisory (15 min exactly is fresh)."""
    verdict = check(make(profile=profile, vitals_=vitals(minutes_ago=minutes)))
    assert ("VITALS_STALE" in rules(verdict)) is stale


@pytest.mark.parametrize("profile", PROFILES)
def test_vitals_missing_is_stale(profile: str) -> None:
    """No vitals at all, or only a heart rate, is VITALS_STALE (advisory, still accept)."""
    none = check(make(profile=profile, vitals_=None))
    assert "VITALS_STALE" in rules(none)
    assert none.verdict == "accept"
    hr_only = {"hr": {"value": 80, "unit": "/min", "at": "2026-11-26T09:59:00Z"}}
    assert "VITALS_STALE" in rules(check(make(profile=profile, vitals_=hr_only)))


def test_stale_map_is_not_used_for_targets() -> None:
    """A MAP of 95 from an hour ago does not trigger MAP_ABOVE_TARGET."""
    verdict = check(make(vitals_=vitals(map_=95, minutes_ago=60)))
    assert "MAP_ABOVE_TARGET" not in rules(verdict)
    assert "VITALS_STALE" in rules(verdict)
