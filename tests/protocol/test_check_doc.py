"""docs/check.md says what the engine does: its request example gets its verdict example, its
rounding table is what the engine computes, its TOML is in the shipped library and every
`infusiond ...` command it shows exists."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from protocol.consistency import check_library
from protocol.engine import evaluate
from protocol.library import DEFAULT_LIBRARY_PATH, load_library_bytes
from protocol.request import parse_request_json
from tests.docs.docs_text import blocks, code_spans, prose
from tests.docs.test_links_and_commands import check_invocation
from tests.protocol.builders import check, make, rules, shipped

DOC = Path(__file__).resolve().parents[2] / "docs" / "check.md"


def test_request_example_gets_the_verdict_example() -> None:
    """The first JSON block, checked, gives the second one (library sha256 elided)."""
    request, verdict = [b.text for b in blocks(DOC) if b.lang == "json"][:2]
    out = evaluate(shipped(), parse_request_json(request)).to_dict()
    expected = json.loads(verdict)
    assert out["library"]["name"] == expected["library"]["name"]
    assert out["library"]["version"] == expected["library"]["version"]
    out["library"] = expected["library"]
    assert out == expected


ROWS = {
    "hepatorenal 3 mg/h at 64 ug/mL": (
        make(profile="hepatorenal", current="2.5", new="3", conc=(64, "ug/mL")),
        "46.87",
        set(),
    ),
    "pediatric-icu 5 ug/kg/min, 68.1 kg, 64 ug/mL": (
        make(profile="pediatric-icu", current="4.5", new="5", weight=68.1, conc=(64, "ug/mL")),
        "319.21",
        {"SOFT_MAX"},
    ),
    "pediatric-icu start 0.1 ug/kg/min, 22 kg, 64 ug/mL": (
        make(profile="pediatric-icu", current=None, new="0.1", weight=22, conc=(64, "ug/mL")),
        "2.07",
        set(),
    ),
    "hepatorenal start 0.5 mg/h at 64 ug/mL": (
        make(profile="hepatorenal", current=None, new="0.5", conc=(64, "ug/mL")),
        "7.81",
        {"SOFT_MIN"},
    ),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_rounding_table_row(row: str) -> None:
    """Each row of the rounding table is in the page and is what the engine computes."""
    req, rate, found = ROWS[row]
    line = next((ln for ln in DOC.read_text(encoding="utf-8").splitlines() if row in ln), None)
    assert line is not None, f"row {row!r} is not in docs/check.md"
    verdict = check(req)
    assert verdict.rate == Decimal(rate)
    assert f"| {rate} mL/h" in line
    assert verdict.dose is not None
    shown = re.findall(r"\| ([0-9.]+) (?:mg/h|ug/kg/min) \|$", line)
    assert shown
    assert Decimal(f"{verdict.dose.value:.6g}") == Decimal(shown[0])  # six significant digits
    assert rules(verdict) == found


def test_toml_example_is_the_shipped_pump_default() -> None:
    """The pump_default line shown is the one in the shipped library."""
    (toml,) = (b.text.strip() for b in blocks(DOC) if b.lang == "toml" and "pump_default" in b.text)
    assert toml in DEFAULT_LIBRARY_PATH.read_text(encoding="utf-8")


def test_library_shape_example_loads_and_is_consistent() -> None:
    """The library TOML shown loads and passes every `infusiond library check` consistency check,
    including its [[examples]] row computing to the expected rate."""
    (toml,) = (b.text for b in blocks(DOC) if b.lang == "toml" and "[[profiles]]" in b.text)
    library = load_library_bytes(toml.encode(), "docs/check.md")
    assert len(library.examples) == 1
    assert check_library(library) == []


def test_every_infusiond_command_exists() -> None:
    """`infusiond ...` in the sh blocks and code spans parses with the real CLI parser."""
    found = [
        line.split("infusiond", 1)[1]
        for b in blocks(DOC)
        if b.lang == "sh"
        for line in b.text.splitlines()
        if line.startswith("infusiond ")
    ]
    found += [
        s.split("infusiond", 1)[1] for s in code_spans(prose(DOC)) if s.startswith("infusiond ")
    ]
    assert len(found) >= 4
    for words in found:
        check_invocation(words.replace("<", " < "))
