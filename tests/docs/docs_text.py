"""Reading the documentation: which files, their fenced blocks, code spans and links."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"
GUIDES = (
    DOCS / "integration-guide.md",
    DOCS / "biomed-guide.md",
    DOCS / "operator-guide.md",
    DOCS / "configuration.md",
)
#: every page (links and `infusiond ...` invocations are checked in all of them)
MARKDOWN = (*sorted(DOCS.glob("*.md")), ROOT / "README.md")
ASYNCAPI = DOCS / "asyncapi.yaml"

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its language and first line number."""
    text = path.read_text(encoding="utf-8")
    return [
        Block(path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in _FENCE.finditer(text)
    ]


def prose(path: Path) -> str:
    """A Markdown file without its fenced blocks."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def code_spans(text: str) -> list[str]:
    return _SPAN.findall(text)


def links(path: Path) -> list[str]:
    """Link targets of a Markdown file, outside code blocks."""
    return _LINK.findall(prose(path))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", prose(path), re.MULTILINE)}
