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
        description = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert description, row


def test_defaults_and_constraints_come_from_the_models() -> None:
    """A default and a limit read from the models (not written by hand) appear in the table."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert '| `url` | string | `"mqtt://127.0.0.1:1883"` |' in text
    assert "| `keepalive_s` | integer | `30` | >= 5; <= 3600 |" in text
    assert "one of `modbus`, `newera`" in text
