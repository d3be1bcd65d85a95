"""The TOML shown in the guides is what the loaders accept: the operator guide's configuration
loads with daemon.config, and the biomed guide's scenarios load with the simulators' loaders."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_config
from protocol.library import DEFAULT_LIBRARY_PATH
from sim_devices import modbus_scenario, newera_scenario
from sim_devices.scenario import parse_scenario
from tests.docs.docs_text import GUIDES, Block, blocks


def toml_blocks() -> list[Block]:
    return [b for path in GUIDES for b in blocks(path) if b.lang == "toml"]


def kind_of(data: dict[str, Any]) -> str:
    if "gateway_id" in data:
        return "config"
    if "scenario" in data:
        return "modbus-scenario"
    if "name" in data:
        return "patient-scenario"
    if any("action" in e for e in data.get("events", [])):
        return "newera-scenario"
    raise AssertionError(f"unrecognised TOML example: {sorted(data)}")


@pytest.mark.parametrize("block", toml_blocks(), ids=lambda b: b.where)
def test_toml_example_is_accepted_by_its_loader(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each TOML example parses and its loader accepts it (files it names are provided)."""
    for name in [k for k in os.environ if k.upper().startswith("INFUSIOND_")]:
        monkeypatch.delenv(name)
    data = tomllib.loads(block.text)
    kind = kind_of(data)
    path = tmp_path / "example.toml"
    if kind == "config":
        text = block.text
        library = tmp_path / "library.toml"
        shutil.copy(DEFAULT_LIBRARY_PATH, library)
        text = text.replace("/etc/infusiond/library.toml", str(library))
        for name in ("ca.pem", "client.pem", "client.key"):
            (tmp_path / name).write_text("placeholder\n")
            text = text.replace(f"/etc/infusiond/{name}", str(tmp_path / name))
        path.write_text(text)
        config = load_config(path)
        assert config.gateway_id == data["gateway_id"]
    elif kind == "modbus-scenario":
        path.write_text(block.text)
        assert modbus_scenario.load_scenario(path).events
    elif kind == "newera-scenario":
        path.write_text(block.text)
        _pumps, events = newera_scenario.load_scenario(path)
        assert events
    else:
        assert parse_scenario(data, block.where).name == data["name"]


def test_guides_show_each_kind_of_toml() -> None:
    """The guides carry a configuration and the three scenario formats."""
    kinds = {kind_of(tomllib.loads(b.text)) for b in toml_blocks()}
    assert kinds == {"config", "modbus-scenario", "newera-scenario", "patient-scenario"}
