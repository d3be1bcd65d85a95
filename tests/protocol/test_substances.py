"""The substance vocabulary (protocol/substances.toml) and every place that matches names with it:
line_shares (INCOMPATIBLE_LINE, LINE_SHARE_UNKNOWN), diluent (DILUENT_FORBIDDEN),
other_infusions[].drug (prerequisite, duplicates) and `library check` (LIB_UNKNOWN_SUBSTANCE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.consistency import check_library
from protocol.errors import LibraryError
from protocol.library import DEFAULT_LIBRARY_PATH, load_library_bytes
from protocol.substances import (
    DEFAULT_SUBSTANCES_PATH,
    load_vocabulary_bytes,
    normalise,
    shipped_vocabulary,
)
from protocol.verdict import Severity
from tests.protocol.builders import PROFILES, check, dose, make, rules
from tests.protocol.test_cli_protocol import infusiond

VOCAB = shipped_vocabulary()
BICARB = ["Sodium Bicarbonate", "sodium-bicarbonate", "sodium_bicarbonate", "NaHCO3", "bicarb"]
SALINE = ["NS", "normal saline", "0.9% NaCl", "0.9% sodium chloride", "NaCl 0.9%"]
ALKALINE = [
    "alkaline solution",
    "alkaline",
    "Alkaline",
    "tromethamine",
    "THAM",
    "aminophylline",
    "phenytoin",
    *BICARB,
    "sodium bicarbonate",
]
LIBRARY_TEXT = DEFAULT_LIBRARY_PATH.read_bytes()


def test_the_vocabulary_is_labelled_example_data() -> None:
    """The shipped file says it is example data, not a reviewed clinical list."""
    head = DEFAULT_SUBSTANCES_PATH.read_text(encoding="utf-8")[:400]
    assert "EXAMPLE" in head
    assert "NOT FOR CLINICAL USE" in head


@pytest.mark.parametrize("name", BICARB)
def test_bicarbonate_spellings_are_one_alkaline_substance(name: str) -> None:
    """Case, spaces, hyphens, underscores and synonyms all resolve to sodium-bicarbonate."""
    term = VOCAB.lookup(name)
    assert term is not None
    assert term.id == "sodium-bicarbonate"
    assert "alkaline" in term.classes


@pytest.mark.parametrize("name", SALINE)
def test_saline_spellings_are_ns(name: str) -> None:
    """NS is also normal saline, 0.9% NaCl, 0.9% sodium chloride and NaCl 0.9%."""
    assert VOCAB.ident(name) == "NS"


def test_alkaline_solution_is_the_class_and_lists_its_members() -> None:
    """'alkaline solution' names the class; tromethamine, aminophylline, phenytoin are members."""
    term = VOCAB.lookup("Alkaline Solution")
    assert term is not None
    assert term.is_class
    assert {"sodium-bicarbonate", "tromethamine", "aminophylline", "phenytoin"} <= term.members


def test_library_drugs_and_diluents_are_known() -> None:
    """Every drug of the shipped library and the usual diluents are in the vocabulary."""
    for name in ("norepinephrine", "vasopressin", "dobutamine", "dopamine", "phenylephrine"):
        assert VOCAB.ident(name) == name
    assert VOCAB.ident("epinephrine") == VOCAB.ident("adrenaline") == "epinephrine"
    assert VOCAB.ident("noradrenaline") == "norepinephrine"
    for diluent in ("D5W", "D5NS", "NS", "LR"):
        assert VOCAB.ident(diluent) == diluent


@st.composite
def respelled(draw: st.DrawFn) -> tuple[str, str]:
    """(a vocabulary name, the same name with random case and inserted spaces/-/_)."""
    term = draw(st.sampled_from(sorted(VOCAB.terms)))
    out = []
    for ch in term:
        out.append(ch.upper() if draw(st.booleans()) else ch.lower())
        out.append(draw(st.sampled_from(["", "", "", " ", "-", "_"])))
    return term, "".join(out)


@settings(max_examples=300)
@given(pair=respelled())
def test_any_case_space_hyphen_underscore_variant_matches(pair: tuple[str, str]) -> None:
    """Property: inserting spaces/hyphens/underscores or changing case never changes the match."""
    canonical, variant = pair
    assert VOCAB.ident(variant) == canonical
    assert normalise(variant) == normalise(canonical)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("share", ALKALINE)
def test_any_alkaline_line_share_is_incompatible_with_norepinephrine(
    profile: str, share: str
) -> None:
    """Every spelling of bicarbonate, every member of the class and the class itself reject."""
    verdict = check(make(profile=profile, line_shares=["heparin", share]))
    assert "INCOMPATIBLE_LINE" in rules(verdict)
    assert verdict.verdict == "reject"
    finding = next(f for f in verdict.findings if f.rule == "INCOMPATIBLE_LINE")
    assert share in finding.message


@settings(max_examples=200)
@given(
    member=st.sampled_from(sorted(VOCAB.terms["alkaline"].members)),
    data=st.data(),
)
def test_every_spelling_of_every_alkaline_member_rejects(member: str, data: st.DataObject) -> None:
    """Property: a library listing the class 'alkaline' rejects any member, by any name."""
    names = sorted(n for n, t in VOCAB._index.items() if t.id == member)
    name = data.draw(st.sampled_from(names))
    assert "INCOMPATIBLE_LINE" in rules(check(make(line_shares=[name])))


def test_a_class_listed_alone_rejects_every_member() -> None:
    """A library with only incompatible = ["alkaline"] rejects THAM and NaHCO3."""
    text = LIBRARY_TEXT.replace(
        b'incompatible = ["sodium-bicarbonate", "alkaline"]', b'incompatible = ["alkaline"]'
    )
    lib = load_library_bytes(text, "class-only")
    for share in ("THAM", "NaHCO3", "alkaline solution", "phenytoin"):
        assert "INCOMPATIBLE_LINE" in rules(check(make(line_shares=[share]), lib))
    assert "INCOMPATIBLE_LINE" not in rules(check(make(line_shares=["heparin"]), lib))


def test_a_generic_class_share_meets_a_library_listing_only_a_member() -> None:
    """incompatible = ["sodium-bicarbonate"]: an unspecified 'alkaline solution' on the line
    could be bicarbonate, so it rejects; THAM (another member) is not listed and passes."""
    text = LIBRARY_TEXT.replace(
        b'incompatible = ["sodium-bicarbonate", "alkaline"]',
        b'incompatible = ["sodium-bicarbonate"]',
    )
    lib = load_library_bytes(text, "member-only")
    assert "INCOMPATIBLE_LINE" in rules(check(make(line_shares=["alkaline solution"]), lib))
    assert "INCOMPATIBLE_LINE" in rules(check(make(line_shares=["bicarb"]), lib))
    assert "INCOMPATIBLE_LINE" not in rules(check(make(line_shares=["THAM"]), lib))


@pytest.mark.parametrize("share", ["lipid emulsion", "bicarbonite", "x"])
def test_unknown_line_share_needs_confirmation_naming_it(share: str) -> None:
    """A line share the vocabulary does not know is LINE_SHARE_UNKNOWN (confirm), not ignored."""
    verdict = check(make(line_shares=["heparin", share]))
    assert rules(verdict) == {"LINE_SHARE_UNKNOWN"}
    assert verdict.verdict == "confirm"
    finding = verdict.findings[0]
    assert finding.severity is Severity.CONFIRM
    assert repr(share) in finding.message


def test_each_unknown_line_share_is_named_and_a_known_incompatible_still_rejects() -> None:
    """Two unknown shares: two findings; with bicarbonate too, the verdict is reject."""
    verdict = check(make(line_shares=["foo", "bar", "NaHCO3"]))
    assert [f.rule for f in verdict.findings] == [
        "INCOMPATIBLE_LINE",
        "LINE_SHARE_UNKNOWN",
        "LINE_SHARE_UNKNOWN",
    ]
    assert verdict.verdict == "reject"


def test_known_compatible_line_shares_pass() -> None:
    """Heparin, insulin, NS and potassium chloride (any spelling) are known and compatible."""
    verdict = check(make(line_shares=["Heparin", "INSULIN", "normal saline", "KCl"]))
    assert rules(verdict) == set()


def test_line_share_unknown_cannot_be_lowered_by_a_library() -> None:
    """A library may not make an unknown line share advisory: it would be accepted."""
    text = LIBRARY_TEXT.replace(
        b"min_titration_interval_min = 5                                     # (example) ref",
        b'severity = { LINE_SHARE_UNKNOWN = "advisory" }\nmin_titration_interval_min = 5  # ref',
        1,
    )
    with pytest.raises(LibraryError, match="LINE_SHARE_UNKNOWN is at least confirm"):
        load_library_bytes(text, "lowered")


@pytest.mark.parametrize("diluent", SALINE)
def test_every_spelling_of_saline_is_a_forbidden_diluent(diluent: str) -> None:
    """Norepinephrine in saline alone is rejected however NS is written."""
    verdict = check(make(diluent=diluent))
    assert rules(verdict) == {"DILUENT_FORBIDDEN"}


@pytest.mark.parametrize("diluent", ["D5W", "d5w", "D5-W", "dextrose 5%", "5% dextrose", "D5NS"])
def test_spellings_of_an_allowed_diluent_are_allowed(diluent: str) -> None:
    """D5W and D5NS in any spelling are allowed diluents of norepinephrine."""
    assert "DILUENT_FORBIDDEN" not in rules(check(make(diluent=diluent)))


def test_an_unknown_diluent_is_never_allowed() -> None:
    """A diluent the vocabulary does not know is rejected, even for a drug without an allowed
    list (it cannot be checked against the forbidden one)."""
    assert "DILUENT_FORBIDDEN" in rules(check(make(diluent="mystery fluid")))
    text = LIBRARY_TEXT.replace(
        b'diluents = { allowed = ["D5W", "D5NS"], forbidden = ["NS"] }',
        b'diluents = { forbidden = ["NS"] }',
        1,
    )
    lib = load_library_bytes(text, "no-allowed-list")
    assert "DILUENT_FORBIDDEN" in rules(check(make(diluent="mystery fluid"), lib))
    assert "DILUENT_FORBIDDEN" not in rules(check(make(diluent="LR"), lib))
    assert "DILUENT_FORBIDDEN" in rules(check(make(diluent="normal saline"), lib))


def _vasopressin(others: list[dict[str, object]]) -> set[str]:
    req = make(
        drug="vasopressin",
        unit="[USP'U]/min",
        current=None,
        new="0.03",
        conc=(0.2, "[USP'U]/mL"),
        others=others,
    )
    return rules(check(req))


def test_other_infusions_are_matched_by_synonym() -> None:
    """Noradrenaline on another channel is norepinephrine: it satisfies the vasopressin
    prerequisite, and norepinephrine as 'Levophed' is a duplicate of this channel."""
    ne = dose("0.2", "ug/kg/min")
    assert "VASOPRESSIN_PREREQ" not in _vasopressin([{"drug": "Noradrenaline", "dose": ne}])
    assert "VASOPRESSIN_PREREQ" in _vasopressin([{"drug": "dopamine", "dose": ne}])
    assert "DUPLICATE_DRUG" in rules(check(make(others=[{"drug": "Levophed"}])))
    assert "DUPLICATE_DRUG" not in rules(check(make(others=[{"drug": "heparin"}])))


def test_the_infused_drug_may_be_named_by_a_synonym() -> None:
    """'Noradrenaline' finds the library's norepinephrine entry."""
    verdict = check(make(drug="Noradrenaline"))
    assert verdict.verdict == "accept"
    assert verdict.dose is not None


def test_library_check_reports_every_unknown_substance(tmp_path: Path) -> None:
    """A library naming a substance the vocabulary lacks fails with LIB_UNKNOWN_SUBSTANCE,
    naming the profile, drug, field and the name (CLI exit 1)."""
    text = LIBRARY_TEXT.replace(
        b'incompatible = ["sodium-bicarbonate", "alkaline"]',
        b'incompatible = ["sodium-bicarb0nate", "alkaline"]',
        1,
    ).replace(b'forbidden = ["NS"] }', b'forbidden = ["salt water"] }', 1)
    lib = load_library_bytes(text, "typo")
    problems = [p for p in check_library(lib) if p.rule == "LIB_UNKNOWN_SUBSTANCE"]
    assert [p.message.split(": ")[0] for p in problems] == [
        "profile 'adult-icu', drug 'norepinephrine', field 'diluents.forbidden[0]'",
        "profile 'adult-icu', drug 'norepinephrine', field 'incompatible[0]'",
    ]
    assert "'sodium-bicarb0nate' is not in the substance vocabulary" in problems[1].message
    path = tmp_path / "typo.toml"
    path.write_bytes(text)
    proc = infusiond("library", "check", str(path), "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert {p["rule"] for p in out["problems"]} == {"LIB_UNKNOWN_SUBSTANCE"}


def test_shipped_library_names_only_known_substances() -> None:
    """The shipped library passes the LIB_UNKNOWN_SUBSTANCE check."""
    lib = load_library_bytes(LIBRARY_TEXT, "shipped")
    assert check_library(lib) == []


def test_vocabulary_file_errors_name_the_problem() -> None:
    """A name given to two substances, or an undefined class, is a LibraryError."""
    two = (
        b'version = "1"\n[[substances]]\nid = "a"\nnames = ["x"]\n'
        b'[[substances]]\nid = "b"\nnames = ["X "]\n'
    )
    with pytest.raises(LibraryError, match="'X ' is given to both 'a' and 'b'"):
        load_vocabulary_bytes(two, "two")
    undefined = b'version = "1"\n[[substances]]\nid = "a"\nclasses = ["nope"]\n'
    with pytest.raises(LibraryError, match="class 'nope' is not defined"):
        load_vocabulary_bytes(undefined, "undefined")
