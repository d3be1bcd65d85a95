"""The TOML shown in the guides is what the loaders accept: the operator guide's configuration
loads with daemon.base.config, and every scenario in the biomed guide loads with the one scenario
loader and passes the check of the simulator it is written for (the demo's for the full one)."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.base.config import load_config
from daemon.demo.devices import demo_scenario
from protocol.library import DEFAULT_LIBRARY_PATH
from sim_devices import modbus_scenario, newera_scenario, phd_scenario
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_server import NewEraSimulator
from sim_devices.phd_server import PhdSimulator
from sim_devices.scenario import EventAction, Scenario, load_scenario
from tests.docs.docs_text import DOCS, GUIDES, Block, blocks


def toml_blocks() -> list[Block]:
    return [b for path in GUIDES for b in blocks(path) if b.lang == "toml"]


def kind_of(data: dict[str, Any]) -> str:
    if "gateway_id" in data:
        return "config"
    if "name" in data:
        return "scenario"
    raise AssertionError(f"unrecognised TOML example: {sorted(data)}")


def check_scenario(path: Path) -> Scenario:
    """Load ``path`` and run the check of the simulator its name says it is for."""
    scenario = load_scenario(path)
    origin = str(path)
    if any(isinstance(e.pump, str) for e in scenario.events):
        demo_scenario(path, pumps=2, phd=True)
    elif scenario.name.startswith("modbus-"):
        sim = ModbusPumpSimulator(modbus_scenario.setups(scenario, origin) or [ModbusPumpSetup()])
        modbus_scenario.check(sim, scenario, origin)
    elif scenario.name.startswith("newera-"):
        newera = NewEraSimulator(newera_scenario.setups(scenario, origin) or None)
        newera_scenario.check(newera, scenario, origin)
    elif scenario.name.startswith("phd-"):
        phd = PhdSimulator(phd_scenario.setups(scenario, origin) or None)
        phd_scenario.check(phd, scenario, origin)
    return scenario


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
    else:
        path.write_text(block.text)
        assert check_scenario(path).name == data["name"]


def test_guides_show_a_configuration_and_scenarios() -> None:
    """The guides carry a configuration and scenarios (one format for every simulator)."""
    kinds = {kind_of(tomllib.loads(b.text)) for b in toml_blocks()}
    assert kinds == {"config", "scenario"}


def test_the_scenario_format_section_has_a_full_example_the_demo_plays(tmp_path: Path) -> None:
    """The biomed guide's "Scenario files" example uses every action and every top-level key,
    and the demo accepts it."""
    guide = DOCS / "biomed-guide.md"
    text = guide.read_text(encoding="utf-8")
    start = text.index("\n## Scenario files")
    end = text.index("\n## ", start + 1)
    examples = [b for b in blocks(guide) if b.lang == "toml" and b.text in text[start:end]]
    assert len(examples) == 1
    path = tmp_path / "full.toml"
    path.write_text(examples[0].text)
    scenario = demo_scenario(path, pumps=2, phd=True)
    assert {e.action for e in scenario.events} == set(EventAction)
    assert scenario.patient
    assert scenario.seed
