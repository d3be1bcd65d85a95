"""docs/examples/titrate.py compiles, passes ruff, and is the program the guide shows."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

from tests.docs.docs_text import DOCS, blocks

EXAMPLE = DOCS / "examples" / "titrate.py"


def test_example_compiles(tmp_path: Path) -> None:
    """The example is valid Python for the project's interpreter."""
    py_compile.compile(str(EXAMPLE), cfile=str(tmp_path / "titrate.pyc"), doraise=True)


def test_example_passes_ruff() -> None:
    """The example follows the project's lint rules and formatting."""
    ruff = Path(sys.executable).parent / "ruff"
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [str(ruff), *args, str(EXAMPLE)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_guide_shows_the_example_verbatim() -> None:
    """The integration guide's Python block is the file, so the two cannot drift."""
    python = [b.text for b in blocks(DOCS / "integration-guide.md") if b.lang == "python"]
    assert python == [EXAMPLE.read_text(encoding="utf-8")]
