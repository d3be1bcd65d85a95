"""Cross-infusion rules: VASOPRESSIN_PREREQ, NOT_FIRST_LINE and DUPLICATE_DRUG."""

from __future__ import annotations

from typing import Any

import pytest

from tests.protocol.builders import check, dose, make, rules

VASO: dict[str, Any] = {
    "drug": "vasopressin",
    "unit": "[USP'U]/min",
    "conc": (0.2, "[USP'U]/mL"),
}


def ne(value: str, unit: str = "ug/kg/min") -> dict[str, Any]:
    return {"drug": "norepinephrine", "dose": dose(value, unit)}


@pytest.mark.parametrize(
    ("others", "flagged"),
    [
        ([ne("0.1")], False),
        ([ne("0.25")], False),
        ([ne("0.0999")], True),
        ([], True),
        ([ne("7", "ug/min")], False),  # 7 ug/min at 70 kg = 0.1 ug/kg/min
        ([ne("6.99", "ug/min")], True),
        ([{"drug": "norepinephrine"}], True),  # dose unknown: not shown to be >= 0.1
        ([ne("0.05"), ne("0.12")], False),
    ],
)
def test_vasopressin_prereq_on_start(others: list[dict[str, Any]], flagged: bool) -> None:
    """Starting vasopressin needs norepinephrine >= 0.1 ug/kg/min on another channel."""
    verdict = check(make(**VASO, current=None, new="0.03", others=others))
    assert ("VASOPRESSIN_PREREQ" in rules(verdict)) is flagged
    if flagged:
        assert verdict.verdict == "confirm"


def test_vasopressin_prereq_on_increase_but_not_on_decrease() -> None:
    """Increasing needs the prerequisite; lowering or stopping (weaning) needs none."""
    low_ne = [ne("0.05")]
    assert "VASOPRESSIN_PREREQ" in rules(
        check(make(**VASO, current="0.02", new="0.03", others=low_ne))
    )
    assert "VASOPRESSIN_PREREQ" not in rules(
        check(make(**VASO, current="0.03", new="0.02", others=low_ne))
    )
    assert "VASOPRESSIN_PREREQ" not in rules(check(make(**VASO, current="0.03", stop=True)))


@pytest.mark.parametrize(
    ("drug", "unit", "conc"),
    [
        ("dopamine", "ug/kg/min", (1600, "ug/mL")),
        ("phenylephrine", "ug/min", (100, "ug/mL")),
        ("epinephrine", "ug/kg/min", (16, "ug/mL")),
    ],
)
def test_not_first_line(drug: str, unit: str, conc: tuple[int, str]) -> None:
    """Starting a second-line agent with no norepinephrine running needs confirmation."""
    start = {"dopamine": "5", "phenylephrine": "50", "epinephrine": "0.02"}[drug]
    alone = check(make(drug=drug, unit=unit, conc=conc, current=None, new=start))
    assert "NOT_FIRST_LINE" in rules(alone)
    assert alone.verdict == "confirm"
    finding = next(f for f in alone.findings if f.rule == "NOT_FIRST_LINE")
    assert "not first line" in finding.message
    with_ne = check(
        make(drug=drug, unit=unit, conc=conc, current=None, new=start, others=[ne("0.2")])
    )
    assert "NOT_FIRST_LINE" not in rules(with_ne)
    titration = check(make(drug=drug, unit=unit, conc=conc, current=start, new=start))
    assert "NOT_FIRST_LINE" not in rules(titration)


def test_norepinephrine_and_dobutamine_are_not_flagged_as_second_line() -> None:
    """First-line drugs start without NOT_FIRST_LINE."""
    assert "NOT_FIRST_LINE" not in rules(check(make(current=None, new="0.03")))
    dobu = make(drug="dobutamine", conc=(1000, "ug/mL"), current=None, new="2.5")
    assert "NOT_FIRST_LINE" not in rules(check(dobu))


def test_duplicate_drug() -> None:
    """The same drug on another channel needs confirmation, except when stopping."""
    verdict = check(make(others=[ne("0.05")]))
    assert "DUPLICATE_DRUG" in rules(verdict)
    assert verdict.verdict == "confirm"
    assert "DUPLICATE_DRUG" not in rules(
        check(make(others=[ne("0.05")], stop=True, current="0.03"))
    )
    other = [{"drug": "vasopressin", "dose": dose("0.03", "[USP'U]/min")}]
    assert "DUPLICATE_DRUG" not in rules(check(make(others=other)))
