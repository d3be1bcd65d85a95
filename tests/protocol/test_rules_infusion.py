"""Bag, line, patient, pump and unit rules: all reject-level except CONC_NOT_STANDARD."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.protocol.builders import PROFILES, check, make, rules, shipped


@pytest.mark.parametrize("profile", PROFILES)
def test_conc_route_max_peripheral(profile: str) -> None:
    """Peripheral norepinephrine: 16 ug/mL is the maximum (inclusive); above it rejects."""
    at = check(make(profile=profile, conc=(16, "ug/mL"), route="peripheral"))
    assert "CONC_ROUTE_MAX" not in rules(at)
    assert "CONC_ROUTE_MAX" not in rules(
        check(make(profile=profile, conc=(15.9999, "ug/mL"), route="peripheral"))
    )
    over = check(make(profile=profile, conc=(16.0001, "ug/mL"), route="peripheral"))
    assert "CONC_ROUTE_MAX" in rules(over)
    assert over.verdict == "reject"
    central = check(make(profile=profile, conc=(32, "ug/mL"), route="central"))
    assert "CONC_ROUTE_MAX" not in rules(central)
    assert "CONC_ROUTE_MAX" in rules(
        check(make(profile=profile, conc=(32, "ug/mL"), route="peripheral"))
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_conc_route_max_central(profile: str) -> None:
    """Central norepinephrine: 64 ug/mL allowed, 64.0001 rejected."""
    assert "CONC_ROUTE_MAX" not in rules(check(make(profile=profile, conc=(64, "ug/mL"))))
    assert "CONC_ROUTE_MAX" in rules(check(make(profile=profile, conc=(64.0001, "ug/mL"))))


@pytest.mark.parametrize("profile", PROFILES)
def test_conc_not_standard(profile: str) -> None:
    """A non-standard bag needs confirmation; a standard one in another unit does not."""
    for std in (4, 16, 32, 64):
        assert "CONC_NOT_STANDARD" not in rules(check(make(profile=profile, conc=(std, "ug/mL"))))
    assert "CONC_NOT_STANDARD" not in rules(check(make(profile=profile, conc=(0.016, "mg/mL"))))
    for odd in (8, 4.001, 3.999):
        verdict = check(make(profile=profile, conc=(odd, "ug/mL")))
        assert "CONC_NOT_STANDARD" in rules(verdict)
        assert verdict.verdict == "confirm"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    ("diluent", "ok"), [("D5W", True), ("D5NS", True), ("d5w", True), ("NS", False), ("LR", False)]
)
def test_diluent(profile: str, diluent: str, ok: bool) -> None:
    """Norepinephrine in D5W or D5NS; saline alone (NS) and unlisted diluents are rejected."""
    verdict = check(make(profile=profile, diluent=diluent))
    assert ("DILUENT_FORBIDDEN" not in rules(verdict)) is ok
    if not ok:
        assert verdict.verdict == "reject"


@pytest.mark.parametrize("profile", PROFILES)
def test_incompatible_line(profile: str) -> None:
    """Sharing a line with bicarbonate or an alkaline solution rejects; heparin does not."""
    for bad in (["sodium-bicarbonate"], ["heparin", "Alkaline"]):
        verdict = check(make(profile=profile, line_shares=bad))
        assert "INCOMPATIBLE_LINE" in rules(verdict)
        assert verdict.verdict == "reject"
    assert "INCOMPATIBLE_LINE" not in rules(check(make(profile=profile, line_shares=["heparin"])))


def test_weight_required_for_weight_based_dose() -> None:
    """ug/kg/min without a weight: WEIGHT_REQUIRED, reject, and no rate is computed."""
    verdict = check(make(weight=None))
    assert rules(verdict) == {"WEIGHT_REQUIRED"}
    assert verdict.verdict == "reject"
    assert verdict.rate is None
    assert verdict.to_dict()["rate"] is None


def test_weight_not_required_for_mg_per_hour() -> None:
    """hepatorenal mg/h doses need no weight."""
    verdict = check(make(profile="hepatorenal", weight=None, new="1.2"))
    assert "WEIGHT_REQUIRED" not in rules(verdict)
    assert verdict.rate == Decimal(300)


def test_convertible_unit_is_canonicalised() -> None:
    """0.084 mg/h for a ug/kg/min drug at 70 kg is 0.02 ug/kg/min = 21.0 mL/h (canonical)."""
    verdict = check(make(current=None, new="0.084", unit="mg/h"))
    assert verdict.dose is not None
    assert (verdict.dose.value, verdict.dose.unit) == (Decimal("0.02"), "ug/kg/min")
    assert verdict.rate == Decimal("21.0")
    assert verdict.verdict == "accept"
    assert check(make(current=None, new="0.02", unit="mcg/kg/min")).rate == Decimal("21.0")


@pytest.mark.parametrize("profile", PROFILES)
def test_weight_range(profile: str) -> None:
    """A weight outside the profile's range rejects; the range ends are inclusive."""
    entry = shipped().profile(profile)
    assert entry is not None
    limits = entry.weight_kg
    assert limits is not None
    for ok in (limits.min, limits.max):
        assert "WEIGHT_RANGE" not in rules(check(make(profile=profile, weight=float(ok))))
    for bad in (float(limits.min) - 0.01, float(limits.max) + 0.01):
        verdict = check(make(profile=profile, weight=bad))
        assert "WEIGHT_RANGE" in rules(verdict)
        assert verdict.verdict == "reject"


def test_pump_range() -> None:
    """Rates above the pump maximum or below its minimum reject; the ends are inclusive."""
    # 0.05 -> 0.06 ug/kg/min at 70 kg, 4 ug/mL = 63.0 mL/h
    assert "PUMP_RANGE" not in rules(check(make(pump={"max_rate": 63})))
    assert "PUMP_RANGE" in rules(check(make(pump={"max_rate": 62.99})))
    assert "PUMP_RANGE" not in rules(check(make(pump={"min_rate": 63, "max_rate": 999})))
    low = check(make(pump={"min_rate": 63.01}))
    assert "PUMP_RANGE" in rules(low)
    assert low.verdict == "reject"


def test_pump_resolution_rounding() -> None:
    """The rate is rounded to the pump resolution; a rate that rounds to 0 is rejected."""
    verdict = check(make(new="0.0601", pump={"resolution": 0.1}))  # exact 63.105 mL/h
    assert verdict.rate == Decimal("63.1")
    assert check(make(new="0.0601")).rate == Decimal("63.11")  # default 0.01 mL/h
    tiny = check(make(new="0.0001", conc=(64, "ug/mL"), pump={"resolution": 1}))  # 0.00656 mL/h
    assert "PUMP_RANGE" in rules(tiny)


def test_stop_is_never_out_of_pump_range() -> None:
    """Stopping always yields rate 0, even with a pump minimum."""
    verdict = check(make(stop=True, current="0.05", pump={"min_rate": 1}))
    assert verdict.rate == 0
    assert "PUMP_RANGE" not in rules(verdict)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dose_unit", "[USP'U]/min"),  # units for a mass-dosed drug
        ("dose_unit", "mg/kg"),  # not a dose rate at all
        ("conc_unit", "[USP'U]/mL"),
        ("conc_unit", "ug"),
        ("rate_unit", "mL/min"),
        ("current_unit", "U/min"),
    ],
)
def test_unit_mismatch(field: str, value: str) -> None:
    """An unconvertible or unknown unit is a UNIT_MISMATCH reject naming the field."""
    req = make()
    if field == "dose_unit":
        req["requested"]["dose"]["unit"] = value
    elif field == "conc_unit":
        req["infusion"]["concentration"]["unit"] = value
    elif field == "rate_unit":
        req["requested"] = {"rate": {"value": 10, "unit": value}}
    else:
        req["current"]["unit"] = value
    verdict = check(req)
    assert "UNIT_MISMATCH" in rules(verdict)
    assert verdict.verdict == "reject"


def test_unknown_drug_and_profile() -> None:
    """Unknown drug or profile: a single reject finding naming it, no rate."""
    drug = check(make(drug="adrenaline-x"))
    assert rules(drug) == {"UNKNOWN_DRUG"}
    assert "adrenaline-x" in drug.findings[0].message
    assert drug.rate is None
    prof = check(make(profile="neonatal"))
    assert rules(prof) == {"UNKNOWN_PROFILE"}
    assert prof.verdict == "reject"
    # Names match case-insensitively.
    assert check(make(drug="Norepinephrine", profile="ADULT-ICU")).verdict == "accept"


def test_rate_request_derives_the_dose() -> None:
    """A request by rate (21 mL/h) yields the dose it delivers (0.02 ug/kg/min)."""
    verdict = check(make(rate=21))
    assert verdict.dose is not None
    assert verdict.dose.value == Decimal("0.02")
    assert verdict.rate == Decimal(21)
