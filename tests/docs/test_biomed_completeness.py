"""The biomed guide documents every simulator option and every fault name the code knows."""

from __future__ import annotations

import argparse

import pytest

from daemon.cli import build_parser
from sim_devices.modbus_pump import Fault as ModbusFault
from sim_devices.monitor import MonitorFault
from sim_devices.newera_pump import Fault as NewEraFault
from sim_devices.newera_scenario import EVENTS
from sim_devices.phd_cli import EVENTS as PHD_EVENTS
from sim_devices.phd_pump import Fault as PhdFault
from sim_devices.scenario import EventAction, shipped_scenarios
from tests.docs.docs_text import DOCS

GUIDE = DOCS / "biomed-guide.md"
SECTIONS = {
    "modbus": "## Modbus pump simulator",
    "newera": "## New Era syringe pump simulator",
    "phd": "## PHD ULTRA syringe pump simulator",
    "monitor": "## Patient monitor simulator",
}


def section(kind: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(SECTIONS[kind])
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def sim_parser(kind: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sim = action.choices["sim"]
            for sub in sim._actions:
                if isinstance(sub, argparse._SubParsersAction):
                    return sub.choices[kind]
    raise AssertionError("no sim subcommand")


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_every_option_of_the_simulator_is_in_its_section(kind: str) -> None:
    """`infusiond sim KIND --help` and the guide's table list the same options."""
    text = section(kind)
    options = [o for o in sim_parser(kind)._option_string_actions if o.startswith("--")]
    missing = [o for o in options if o != "--help" and f"`{o}" not in text]
    assert not missing, f"sim {kind}: undocumented options {missing}"


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("modbus", [f.value for f in ModbusFault]),
        ("newera", [f.value for f in NewEraFault] + list(EVENTS)),
        ("phd", [f.value for f in PhdFault] + list(PHD_EVENTS)),
        ("monitor", [f.value for f in MonitorFault]),
    ],
)
def test_every_fault_name_is_documented(kind: str, names: list[str]) -> None:
    """Each fault the simulator accepts has a row in its section."""
    text = section(kind)
    missing = [n for n in names if f"| `{n}" not in text]
    assert not missing, f"sim {kind}: undocumented faults {missing}"


def test_scenario_actions_and_patient_scenarios_are_documented() -> None:
    """Every scenario action has a row in the scenario-format section, the New Era section names
    the actions it plays, and every shipped patient scenario appears."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("## Scenario files")
    scenarios = text[start : text.index("\n## ", start + 1)]
    assert all(f"| `{a.value}` |" in scenarios for a in EventAction)
    newera = section("newera")
    assert all(
        f"`{a.value}`" in newera
        for a in EventAction
        if a not in (EventAction.DRIFT, EventAction.MONITOR)
    )
    monitor = section("monitor")
    assert all(f"`{name}`" in monitor for name in shipped_scenarios())
