"""`check_library`: the shipped library is consistent; each LIB_* problem is detected."""

from __future__ import annotations

from pathlib import Path

from daemon.library_file import load_library
from protocol.consistency import check_library
from tests.protocol.builders import shipped

DATA = Path(__file__).parent / "data"


def test_shipped_library_is_consistent() -> None:
    """The shipped example library has no consistency problem, examples included."""
    assert check_library(shipped()) == []
    assert len(shipped().examples) >= 5


def test_reference_text_claim_is_flagged() -> None:
    """The reference's '0.02 ug/kg/min ~ 0.5 mg/h at 70 kg' is flagged (it is 0.084 mg/h);
    the correct 1.4 ug/min row of the same fixture is not."""
    problems = check_library(load_library(DATA / "reference_claim.toml"))
    assert [p.rule for p in problems] == ["LIB_EXAMPLE_DOSE"]
    assert "0.084 mg/h" in problems[0].message
    assert "0.5 mg/h" in problems[0].message
    assert "example #2" in problems[0].message


def test_every_problem_kind_is_detected_and_located() -> None:
    """The broken fixture trips every LIB_* rule, each message naming profile/drug/field."""
    problems = check_library(load_library(DATA / "broken.toml"))
    found = {p.rule for p in problems}
    assert found == {
        "LIB_START_OUTSIDE_SOFT",
        "LIB_SOFT_OUTSIDE_HARD",
        "LIB_RANGE_OUTSIDE_HARD",
        "LIB_ROUTE_MAX_ORDER",
        "LIB_DILUENT_CONFLICT",
        "LIB_CONC_ABOVE_ROUTE_MAX",
        "LIB_UNIT_INCONVERTIBLE",
        "LIB_UNKNOWN_REFERENCE",
        "LIB_EXAMPLE_RATE",
        "LIB_EXAMPLE_UNKNOWN",
        "LIB_EXAMPLE_UNIT",
    }
    for p in problems:
        if not p.rule.startswith("LIB_EXAMPLE"):
            assert "profile 'ward'" in p.message
            assert "drug '" in p.message
            assert "field '" in p.message
    rate = next(p for p in problems if p.rule == "LIB_EXAMPLE_RATE")
    assert "21 mL/h" in rate.message
    assert "125 mL/h" in rate.message
