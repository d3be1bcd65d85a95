"""The documentation stands on its own: every page is reachable from the README, and no page
points outside the repository or to a file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.docs_text import DOCS, ROOT, links

PAGES = sorted(DOCS.glob("*.md"))
EVERY = [ROOT / "README.md", *PAGES]
CONTRACTS = (
    "check.md",
    "library-format.md",
    "integration-guide.md",
    "asyncapi.yaml",
    "modbus.md",
    "newera.md",
    "hl7-vitals.md",
    "ehr-integration.md",
)


def relative_targets(path: Path) -> list[str]:
    return [t for t in links(path) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("path", EVERY, ids=lambda p: p.name)
def test_no_page_points_outside_the_repository(path: Path) -> None:
    """No mention of the internal design notes, and no relative link that leaves the
    repository or leads to a file that does not exist."""
    text = path.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text
    assert "../shared" not in text
    for target in relative_targets(path):
        dest = (path.parent / target.partition("#")[0]).resolve()
        assert dest.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
        assert dest.exists(), f"{path.name}: {target} does not exist"


def test_the_readme_links_every_page_and_every_contract() -> None:
    """Every page of docs/ is linked from the README, the contracts among them."""
    readme = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    for page in PAGES:
        assert f"docs/{page.name}" in readme, page.name
    for name in CONTRACTS:
        assert f"docs/{name}" in readme, name
