"""docs/library-format.md names every key the loader accepts, every rule id and every LIB_ id,
and its example library passes `library check`."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from protocol.consistency import check_library
from protocol.library import Drug, Example, LibraryFile, Profile, load_library_bytes
from protocol.rule_ids import AT_LEAST_CONFIRM, DEFAULT_SEVERITY, FIXED
from tests.docs.docs_text import DOCS, ROOT, blocks

PAGE = DOCS / "library-format.md"


def section(heading: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def first_cells(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.MULTILINE)}


@pytest.mark.parametrize(
    ("model", "heading"),
    [
        (LibraryFile, "## Top level"),
        (Profile, "## `[[profiles]]`"),
        (Drug, "## `[[profiles.drugs]]`"),
        (Example, "## `[[examples]]`"),
    ],
)
def test_every_key_of_the_model_has_a_row(model: type[BaseModel], heading: str) -> None:
    """Each table lists exactly the keys the loader's model accepts."""
    assert first_cells(section(heading)) == set(model.model_fields)


def test_every_rule_id_is_listed_with_its_shipped_severity() -> None:
    """The rule table covers DEFAULT_SEVERITY exactly, with each rule's severity and the fixed
    and at-least-confirm rules marked."""
    found: dict[str, str] = {}
    for line in section("## Rule ids").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for rule in re.findall(r"`([A-Z_]+)`", cells[0]):
            found[rule] = cells[1]
    assert set(found) == set(DEFAULT_SEVERITY)
    for rule, severity in DEFAULT_SEVERITY.items():
        assert found[rule].startswith(severity.value), rule
        assert ("(fixed)" in found[rule]) == (rule in FIXED), rule
        assert ("(at least)" in found[rule]) == (rule in AT_LEAST_CONFIRM), rule


def test_every_lib_problem_id_of_the_code_is_explained() -> None:
    """Every LIB_* id the code can print has a row, and every row is one the code prints."""
    code = "".join(
        (ROOT / path).read_text(encoding="utf-8")
        for path in ("protocol/consistency.py", "daemon/library_cmd.py")
    )
    in_code = set(re.findall(r'"(LIB_[A-Z_]+)"', code))
    assert first_cells(section("## `library check` problem ids")) == in_code


def test_the_minimal_library_loads_and_is_consistent() -> None:
    """The example file on the page passes `library check` (shape, units, its example row)."""
    (block,) = [b for b in blocks(PAGE) if b.lang == "toml"]
    library = load_library_bytes(block.text.encode(), block.where)
    assert check_library(library) == []
    assert len(library.examples) == 1
