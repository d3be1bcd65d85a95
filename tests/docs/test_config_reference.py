"""docs/configuration.md is what scripts/gen_config_reference.py makes of daemon/config.py."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from daemon.config import Config
from tests.docs.docs_text import DOCS, ROOT


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "scripts" / "gen_config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_md_is_up_to_date() -> None:
    """Regenerating the reference gives the committed file, byte for byte (run
    `.venv/bin/python scripts/gen_config_reference.py` after changing daemon/config.py)."""
    text, _missing = generator().render()
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == text


def test_every_key_is_documented_with_its_environment_variable() -> None:
    """Every field of every section appears as a row, each top-level and section key with its
    INFUSIOND_* variable, and every row has a description."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]
    for field in Config.model_fields:
        assert field in names
        assert f"`INFUSIOND_{field.upper()}`" in text
    for key in ("BROKER__URL", "BROKER__PASSWORD", "BROKER__TLS__CA_FILE", "CONTROL__ALLOWLIST"):
        assert f"`INFUSIOND_{key}`" in text
    for row in rows:
        assert cells(row)[-1], f"no description: {row}"


def cells(row: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is not a separator)."""
    inner = row.strip().removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def test_every_field_has_a_description() -> None:
    """No row of the generated reference has an empty description cell: a new field needs a
    `Field(description=...)` (or a fallback in the generator) or this fails."""
    text, _missing = generator().render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 50
    assert [row for row in rows if not cells(row)[-1]] == []


def test_container_defaults_are_shown_as_toml_values() -> None:
    """An empty-table default reads `{}` and an empty list `[]`, never a Python docstring."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "dict()" not in text
    assert "new empty" not in text
    row = next(r for r in text.splitlines() if r.startswith("| `keys` |"))
    assert cells(row)[2] == "`{}`"


def test_defaults_and_constraints_come_from_the_models() -> None:
    """A default and a limit read from the models (not written by hand) appear in the table."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert '| `url` | string | `"mqtt://127.0.0.1:1883"` |' in text
    assert "| `keepalive_s` | integer | `30` | >= 5; <= 3600 |" in text
    assert "one of `modbus`, `newera`" in text
