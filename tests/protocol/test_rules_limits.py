"""Dose-limit rules at, just below and just above every boundary, in every profile.

HARD_* reject, SOFT_*/START_RANGE confirm, MAINTENANCE_RANGE advises; boundaries are
inclusive (a dose equal to a limit is within it) and immune to float noise.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from protocol.library import DEFAULT_LIBRARY_PATH, Drug, load_library_bytes
from protocol.verdict import Severity
from tests.protocol.builders import PROFILES, check, make, rules, shipped

EPS = Decimal("1e-6")  # relative step for "just below" / "just above"


def _drug(profile: str, drug: str = "norepinephrine") -> Drug:
    entry = shipped().drug(profile, drug)
    assert entry is not None
    return entry


def below(x: Decimal) -> Decimal:
    return x * (1 - EPS)


def above(x: Decimal) -> Decimal:
    return x * (1 + EPS) if x else EPS


@pytest.mark.parametrize("profile", PROFILES)
def test_hard_max_boundary(profile: str) -> None:
    """At the hard maximum: no HARD_MAX; just above: HARD_MAX rejects; just below: none."""
    hard = _drug(profile).hard.max
    assert "HARD_MAX" not in rules(check(make(profile=profile, new=hard)))
    assert "HARD_MAX" not in rules(check(make(profile=profile, new=below(hard))))
    verdict = check(make(profile=profile, new=above(hard)))
    assert "HARD_MAX" in rules(verdict)
    assert verdict.verdict == "reject"
    finding = next(f for f in verdict.findings if f.rule == "HARD_MAX")
    assert finding.severity is Severity.REJECT
    assert finding.limit is not None
    assert finding.limit.value == hard
    assert finding.observed is not None
    assert finding.observed.value > hard


@pytest.mark.parametrize("profile", PROFILES)
def test_soft_max_boundary(profile: str) -> None:
    """SOFT_MAX asks for confirmation just above the soft maximum, not at or below it."""
    drug = _drug(profile)
    soft = drug.soft.max
    assert "SOFT_MAX" not in rules(check(make(profile=profile, new=soft)))
    assert "SOFT_MAX" not in rules(check(make(profile=profile, new=below(soft))))
    over = rules(check(make(profile=profile, new=above(soft))))
    if soft == drug.hard.max:  # hepatorenal: soft and hard maximum coincide (3 mg/h)
        assert "HARD_MAX" in over
        assert "SOFT_MAX" not in over  # the hard finding replaces the soft one
    else:
        assert "SOFT_MAX" in over
        assert "HARD_MAX" not in over


@pytest.mark.parametrize("profile", PROFILES)
def test_soft_min_boundary(profile: str) -> None:
    """SOFT_MIN asks for confirmation just below the soft minimum, not at or above it."""
    soft = _drug(profile).soft.min
    assert "SOFT_MIN" not in rules(check(make(profile=profile, new=soft)))
    assert "SOFT_MIN" not in rules(check(make(profile=profile, new=above(soft))))
    verdict = check(make(profile=profile, new=below(soft)))
    assert "SOFT_MIN" in rules(verdict)
    assert verdict.verdict == "confirm"


@pytest.mark.parametrize("profile", PROFILES)
def test_start_range_boundaries(profile: str) -> None:
    """A new infusion (current null) outside the start range needs confirmation; a range of
    a single value (pediatric 0.1 ug/kg/min, hepatorenal 0.5 mg/h) is met within one pump
    step (0.01 mL/h) of it, so only a dose more than one step away is outside."""
    start = _drug(profile).start
    assert start is not None
    for ok in (start.min, start.max):
        assert "START_RANGE" not in rules(check(make(profile=profile, current=None, new=ok)))
    eps = EPS if start.min < start.max else Decimal("0.01")
    for bad in (start.min * (1 - eps), start.max * (1 + eps)):
        verdict = check(make(profile=profile, current=None, new=bad))
        assert "START_RANGE" in rules(verdict)
        assert verdict.verdict in {"confirm", "reject"}


@pytest.mark.parametrize("profile", PROFILES)
def test_start_range_only_for_new_infusions(profile: str) -> None:
    """Titrating a running infusion outside the start range is not a START_RANGE matter."""
    start = _drug(profile).start
    assert start is not None
    assert "START_RANGE" not in rules(check(make(profile=profile, new=above(start.max))))


def test_float_noise_is_not_above_a_limit() -> None:
    """0.1 * 0.4 (= 0.04000000000000001 in floats) is at, not above, vasopressin's hard 0.04."""
    noisy = 0.1 * 0.4
    assert noisy != 0.04
    req = make(drug="vasopressin", unit="[USP'U]/min", conc=(0.2, "[USP'U]/mL"), current="0.03")
    req["requested"]["dose"]["value"] = noisy
    req["other_infusions"] = [
        {"drug": "norepinephrine", "dose": {"value": 0.2, "unit": "ug/kg/min"}}
    ]
    assert "HARD_MAX" not in rules(check(req))


def test_hard_min_rejects_below_a_positive_hard_minimum() -> None:
    """A library with a hard minimum above zero rejects doses below it (inclusive at it)."""
    data = DEFAULT_LIBRARY_PATH.read_bytes().replace(
        b"hard = { min = 0.0, max = 3.0 }                                    # (example)\n"
        b"escalation",
        b"hard = { min = 0.005, max = 3.0 }\nescalation",
        1,
    )
    lib = load_library_bytes(data, "hard-min.toml")
    entry = lib.drug("adult-icu", "norepinephrine")
    assert entry is not None
    assert entry.hard.min == Decimal("0.005")
    assert "HARD_MIN" not in rules(check(make(new="0.005"), lib))
    verdict = check(make(new="0.004999"), lib)
    assert "HARD_MIN" in rules(verdict)
    assert "SOFT_MIN" not in rules(verdict)  # the hard finding replaces the soft one
    assert verdict.verdict == "reject"


def test_maintenance_range_advisory_adult_label() -> None:
    """adult-label: titrating outside the 2-4 ug/min maintenance range is an advisory only."""
    for ok in ("2", "4", "3"):
        assert "MAINTENANCE_RANGE" not in rules(check(make(profile="adult-label", new=ok)))
    for off in ("1.999", "4.001"):
        verdict = check(make(profile="adult-label", new=off))
        assert "MAINTENANCE_RANGE" in rules(verdict)
        finding = next(f for f in verdict.findings if f.rule == "MAINTENANCE_RANGE")
        assert finding.severity is Severity.ADVISORY
    # Starting at the label's 8-12 ug/min is not "outside maintenance".
    assert "MAINTENANCE_RANGE" not in rules(
        check(make(profile="adult-label", current=None, new="8"))
    )


@pytest.mark.parametrize(("value", "flagged"), [("3", True), ("2.5", True), ("3.0001", False)])
def test_renal_dose_dopamine(value: str, flagged: bool) -> None:
    """Dopamine at or below 3 ug/kg/min is a 'renal dose' needing confirmation."""
    req = make(drug="dopamine", conc=(1600, "ug/mL"), current="5", new=value)
    assert ("RENAL_DOSE_DOPAMINE" in rules(check(req))) is flagged


def test_zero_dose_is_a_stop_not_a_soft_min() -> None:
    """A requested dose of 0 is a stop: rate 0, no SOFT_MIN."""
    verdict = check(make(new=0, current="0.02"))
    assert verdict.rate == 0
    assert "SOFT_MIN" not in rules(verdict)
