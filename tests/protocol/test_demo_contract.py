"""The demo bedside and the 21.0 mL/h worked example hold with the shipped library."""

from __future__ import annotations

from decimal import Decimal

from protocol.units import (
    concentration_unit,
    convert_dose,
    dose_to_rate,
    dose_unit,
)
from tests.protocol.builders import check, dose, make, rules

VASO_ON_OTHER_CHANNEL = [{"drug": "vasopressin", "dose": dose("0.03", "[USP'U]/min")}]


def test_worked_example_norepinephrine_21_ml_h() -> None:
    """0.02 ug/kg/min x 70 kg = 1.4 ug/min; at 4 ug/mL = 21.0 mL/h; = 0.084 mg/h (not 0.5)."""
    kgmin, ugmin, mgh = dose_unit("ug/kg/min"), dose_unit("ug/min"), dose_unit("mg/h")
    w = Decimal(70)
    assert convert_dose(Decimal("0.02"), kgmin, ugmin, w) == Decimal("1.4")
    assert convert_dose(Decimal("0.02"), kgmin, mgh, w) == Decimal("0.084")
    rate = dose_to_rate(Decimal("0.02"), kgmin, Decimal(4), concentration_unit("ug/mL"), w)
    assert rate == Decimal("21.0")
    verdict = check(make(current=None, new="0.02"))
    assert verdict.to_dict()["rate"] == {"value": 21.0, "unit": "mL/h"}
    assert verdict.verdict == "accept"


def test_demo_titration_pump1_is_accepted_at_63_ml_h() -> None:
    """adult-icu, 70 kg, NE 4 ug/mL D5W central 0.05 -> 0.06, MAP 75 fresh, vasopressin on
    another channel: accept (advisories allowed) at 63.0 mL/h."""
    req = make(current="0.05", new="0.06", others=VASO_ON_OTHER_CHANNEL)
    verdict = check(req)
    assert verdict.verdict == "accept"
    assert all(f.severity.value in {"info", "advisory"} for f in verdict.findings)
    out = verdict.to_dict()
    assert out["rate"] == {"value": 63.0, "unit": "mL/h"}
    assert out["dose"] == {"value": 0.06, "unit": "ug/kg/min"}


def test_demo_running_doses_compute_to_the_demo_rates() -> None:
    """Demo pump-1 0.05 ug/kg/min = 52.5 mL/h; pump-2 vasopressin 0.03 at 0.2/mL = 9.0 mL/h."""
    assert check(make(current=None, new="0.05")).rate == Decimal("52.5")
    vaso = make(
        drug="vasopressin",
        unit="[USP'U]/min",
        conc=(0.2, "[USP'U]/mL"),
        current=None,
        new="0.03",
        others=[{"drug": "norepinephrine", "dose": dose("0.1", "ug/kg/min")}],
    )
    verdict = check(vaso)
    assert verdict.to_dict()["rate"] == {"value": 9.0, "unit": "mL/h"}
    assert verdict.verdict == "accept"


def test_demo_lowering_vasopressin_needs_no_prerequisite() -> None:
    """Weaning: vasopressin 0.03 -> 0.02 with norepinephrine at 0.05 has no VASOPRESSIN_PREREQ."""
    req = make(
        drug="vasopressin",
        unit="[USP'U]/min",
        conc=(0.2, "[USP'U]/mL"),
        current="0.03",
        new="0.02",
        others=[{"drug": "norepinephrine", "dose": dose("0.05", "ug/kg/min")}],
    )
    verdict = check(req)
    assert "VASOPRESSIN_PREREQ" not in rules(verdict)
    assert verdict.verdict == "accept"
    assert verdict.rate == Decimal("6.0")
