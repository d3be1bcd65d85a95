"""The library loader: identity, the expected ranges and fields of the shipped file, and errors
that name the file, profile, drug and field."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.library_file import load_library
from protocol.errors import LibraryError
from protocol.library import DEFAULT_LIBRARY_PATH, load_library_bytes
from protocol.verdict import Severity
from tests.protocol.builders import shipped

SHIPPED_BYTES = DEFAULT_LIBRARY_PATH.read_bytes()
D = Decimal


def test_identity_is_name_version_and_sha256_of_the_bytes() -> None:
    """The identity is the file's name, version and the sha256 of its exact bytes."""
    ident = load_library(DEFAULT_LIBRARY_PATH).identity
    assert ident.name == "vasopressors-example"
    assert ident.version == "2026.12.1"
    assert ident.sha256 == hashlib.sha256(SHIPPED_BYTES).hexdigest()
    changed = load_library_bytes(SHIPPED_BYTES + b"\n# comment\n", "x.toml").identity
    assert changed.sha256 != ident.sha256


def test_shipped_file_says_it_is_an_example_not_for_clinical_use() -> None:
    """The header warns that the library is an example and not for clinical use."""
    head = SHIPPED_BYTES.decode()[:300]
    assert "EXAMPLE" in head
    assert "NOT FOR CLINICAL USE" in head


# (profile, drug, unit, start, soft, hard) that the shipped example library must hold.
ROWS = [
    ("adult-icu", "norepinephrine", "ug/kg/min", ("0.02", "0.05"), ("0.01", "1.0"), ("0", "3.0")),
    ("adult-icu", "vasopressin", "[USP'U]/min", ("0.03", "0.03"), ("0.01", "0.03"), ("0", "0.04")),
    ("adult-icu", "dobutamine", "ug/kg/min", ("2.5", "2.5"), ("2.5", "20"), ("0", "40")),
    ("adult-label", "norepinephrine", "ug/min", ("8", "12"), ("2", "30"), ("0", "100")),
    ("pediatric-icu", "norepinephrine", "ug/kg/min", ("0.1", "0.1"), ("0.1", "1.0"), ("0", "5.0")),
    ("hepatorenal", "norepinephrine", "mg/h", ("0.5", "0.5"), ("0.5", "3"), ("0", "3")),
    ("anaphylaxis", "norepinephrine", "ug/kg/min", ("0.05", "0.1"), ("0.05", "1.0"), ("0", "3.0")),
]


@pytest.mark.parametrize(("profile", "drug", "unit", "start", "soft", "hard"), ROWS)
def test_shipped_library_holds_the_expected_ranges(
    profile: str,
    drug: str,
    unit: str,
    start: tuple[str, str],
    soft: tuple[str, str],
    hard: tuple[str, str],
) -> None:
    """Each expected (profile, drug) is in the shipped library with its unit and ranges."""
    entry = shipped().drug(profile, drug)
    assert entry is not None
    assert entry.dose_unit == unit
    assert entry.start is not None
    assert (entry.start.min, entry.start.max) == (D(start[0]), D(start[1]))
    assert (entry.soft.min, entry.soft.max) == (D(soft[0]), D(soft[1]))
    assert (entry.hard.min, entry.hard.max) == (D(hard[0]), D(hard[1]))


def test_shipped_library_holds_the_other_expected_fields() -> None:
    """Escalation, taper, maintenance, step-up, weights, prerequisites, first-line flags."""
    lib = shipped()
    ne = lib.drug("adult-icu", "norepinephrine")
    assert ne is not None
    assert ne.escalation is not None
    assert ne.taper is not None
    assert (ne.escalation.at, ne.escalation.map_below) == (D("0.1"), D(65))
    assert "vasopressin 0.03 [USP'U]/min" in ne.escalation.advise
    label = lib.drug("adult-label", "norepinephrine")
    assert label is not None
    assert label.maintenance is not None
    assert (label.maintenance.min, label.maintenance.max) == (D(2), D(4))
    hr = lib.drug("hepatorenal", "norepinephrine")
    assert hr is not None
    assert hr.step_up is not None
    assert (hr.step_up.window_h, hr.step_up.max_increase) == (D(4), D("0.5"))
    assert hr.severity_of("STEP_UP_WINDOW") is Severity.REJECT
    ped = lib.profile("pediatric-icu")
    assert ped is not None
    assert ped.weight_kg is not None
    assert (ped.weight_kg.min, ped.weight_kg.max) == (D("0.5"), D(80))
    vaso = lib.drug("adult-icu", "vasopressin")
    assert vaso is not None
    assert vaso.prerequisite is not None
    assert vaso.prerequisite.drug == "norepinephrine"
    assert vaso.prerequisite.min_dose.value == D("0.1")
    for name in ("dopamine", "phenylephrine", "epinephrine"):
        d = lib.drug("adult-icu", name)
        assert d is not None
        assert not d.first_line
        assert d.first_line_alternatives == ("norepinephrine",)
    phe = lib.drug("adult-icu", "phenylephrine")
    assert phe is not None
    assert phe.dose_unit == "ug/min"
    dopa = lib.drug("adult-icu", "dopamine")
    assert dopa is not None
    assert dopa.renal_dose_max == D(3)


STANDARD = {
    "norepinephrine": ({4, 16, 32, 64}, {"D5W", "D5NS"}),
    "vasopressin": ({D("0.2"), 1}, {"D5W", "NS"}),
    "dobutamine": ({1000, 2000, 4000}, {"D5W", "NS"}),
    "dopamine": ({1600, 3200}, {"D5W"}),
    "epinephrine": ({16, 32}, {"D5W", "NS"}),
    "phenylephrine": ({100, 200}, {"D5W", "NS"}),
}


def test_standard_concentrations_and_diluents() -> None:
    """Every drug in every profile has its standard bags and allowed diluents."""
    for profile in shipped().profiles:
        for drug in profile.drugs:
            values, diluents = STANDARD[drug.drug]
            assert {c.value for c in drug.concentrations} == {D(v) for v in values}
            assert set(drug.diluents.allowed) == diluents
            if drug.drug == "norepinephrine":
                assert drug.diluents.forbidden == ("NS",)
                assert set(drug.incompatible) == {"sodium-bicarbonate", "alkaline"}
                assert drug.max_concentration.peripheral is not None
                assert drug.max_concentration.peripheral.value == 16


def test_reference_values_are_marked() -> None:
    """Lines carrying reference values say (ref); institutional values say (example)."""
    lines = SHIPPED_BYTES.decode().splitlines()
    start_lines = [ln for ln in lines if ln.startswith("start =")]
    assert start_lines
    assert all("(ref)" in ln or "(example)" in ln for ln in start_lines)
    assert any("(example)" in ln for ln in lines if ln.startswith("soft ="))


def _bad(text_from: str, text_to: str) -> str:
    data = SHIPPED_BYTES.decode().replace(text_from, text_to, 1).encode()
    assert data != SHIPPED_BYTES
    with pytest.raises(LibraryError) as exc:
        load_library_bytes(data, "lib.toml")
    return str(exc.value)


def test_error_names_file_profile_drug_and_field_for_a_typo() -> None:
    """An unknown key is an error naming where it is (a typo never disables a rule)."""
    msg = _bad("soft = { min = 0.01, max = 1.0 }", "sotf = { min = 0.01, max = 1.0 }")
    assert msg.startswith("lib.toml: ")
    assert "profile 'adult-icu'" in msg
    assert "drug 'norepinephrine'" in msg
    assert "field 'sotf'" in msg


def test_error_for_bad_values() -> None:
    """Reversed ranges, unknown units, bad severities are errors naming the field."""
    msg = _bad("hard = { min = 0.0, max = 3.0 }", "hard = { min = 4.0, max = 3.0 }")
    assert "field 'hard'" in msg
    assert "above max" in msg
    msg = _bad('dose_unit = "mg/h"', 'dose_unit = "mg/fortnight"')
    assert "profile 'hepatorenal'" in msg
    assert "field 'dose_unit'" in msg
    msg = _bad('severity = "reject" }', 'severity = "sometimes" }')
    assert "field 'step_up.severity'" in msg


def test_error_for_duplicates_and_syntax(tmp_path: Path) -> None:
    """Duplicate profiles, invalid TOML, unreadable files and missing files are LibraryErrors."""
    msg = _bad('id = "adult-label"', 'id = "adult-icu"')
    assert "profile 'adult-icu'" in msg
    assert "twice" in msg
    with pytest.raises(LibraryError, match="invalid TOML"):
        load_library_bytes(b"name = [", "x.toml")
    with pytest.raises(LibraryError, match="not UTF-8"):
        load_library_bytes(b"name = '\xff'", "x.toml")
    with pytest.raises(LibraryError, match="cannot read"):
        load_library(tmp_path / "missing.toml")


def test_fixed_reject_rules_cannot_be_downgraded() -> None:
    """A per-drug severity override may not lower HARD_MAX below reject."""
    msg = _bad(
        "min_titration_interval_min = 5                                     # (example) ref",
        'severity = { HARD_MAX = "confirm" }\nmin_titration_interval_min = 5 # ref',
    )
    assert "HARD_MAX" in msg
    assert "field 'severity" in msg


def test_severity_override_applies() -> None:
    """A library can make STEP_UP_WINDOW a confirm for a drug."""
    data = SHIPPED_BYTES.replace(b'severity = "reject" }', b'severity = "confirm" }', 1)
    lib = load_library_bytes(data, "x.toml")
    hr = lib.drug("hepatorenal", "norepinephrine")
    assert hr is not None
    assert hr.severity_of("STEP_UP_WINDOW") is Severity.CONFIRM


def test_drug_facts_are_found_by_any_spelling_and_derived_from_the_entry() -> None:
    """The per-(profile, drug) facts the rules use are the same object whether the request
    spells the names as the library does or in another case/with spaces, ``None`` for an
    unknown pair, and hold the entry's data in base units and as match keys."""
    library = load_library(DEFAULT_LIBRARY_PATH)
    facts = library.facts("adult-icu", "norepinephrine")
    assert facts is not None
    assert library.facts(" ADULT-ICU ", "Norepinephrine ") is facts
    assert library.facts("adult-icu", "nope") is None
    assert library.facts("nope", "norepinephrine") is None
    assert facts.drug is library.drug("adult-icu", "norepinephrine")
    assert facts.profile is library.profile("adult-icu")
    assert facts.unit.code == facts.drug.dose_unit
    assert facts.key == "norepinephrine"
    assert facts.vitals_max_age.total_seconds() == float(facts.profile.vitals_max_age_min) * 60
    peripheral, peripheral_base = facts.route_max["peripheral"]
    assert (peripheral.value, peripheral.unit, peripheral_base) == (D(16), "ug/mL", D(16))
    assert facts.route_max["central"][1] == D(64)
    assert facts.standard_bases == tuple(c.value for c in facts.drug.concentrations)
    # Name sets are the normalised spellings of every synonym (the vocabulary is precomputed).
    assert {"ns", "normalsaline", "0.9%nacl", "nacl0.9%"} <= facts.forbidden_diluents
    assert "d5w" not in facts.forbidden_diluents
    assert {"d5w", "dextrose5%", "d5ns"} <= facts.allowed_diluents
    assert "ns" not in facts.allowed_diluents
    assert {"sodiumbicarbonate", "nahco3", "bicarb", "alkaline", "alkalinesolution", "tham"} <= (
        facts.incompatible
    )
    assert "heparin" not in facts.incompatible
