"""Timed fault/front-panel scenarios for the Modbus pump simulator (TOML files).

Format (``sim_devices/scenarios/modbus-*.toml``)::

    [scenario]
    name = "occlusion-and-recovery"
    description = "..."

    [[events]]
    at_s = 30              # simulated seconds after the start
    fault = "occlusion"    # inject a fault (any Fault name); optional arg = 2.5, unit = 1
    [[events]]
    at_s = 90
    clear = "occlusion"    # remove a fault's cause

Times are simulated seconds, so ``--speed 60`` plays a one-hour scenario in one minute.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from sim_devices.clock import SimClock
from sim_devices.modbus_pump import Fault

log = structlog.get_logger("infusiond.sim.modbus")


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the event."""


@dataclass(frozen=True, slots=True)
class ScenarioEvent:
    """At ``at_s``, inject (or with ``clear``, remove) ``fault`` on ``unit`` (None = all)."""

    at_s: float
    fault: Fault
    clear: bool = False
    arg: float | None = None
    unit: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    events: tuple[ScenarioEvent, ...]
    description: str = ""


def load_scenario(path: str | Path) -> Scenario:
    """Parse a scenario file; ScenarioError names what is wrong."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{p}: {exc}") from None
    head = data.get("scenario", {})
    events = [_event(p, i, e) for i, e in enumerate(data.get("events", []))]
    return Scenario(
        name=str(head.get("name", p.stem)),
        description=str(head.get("description", "")),
        events=tuple(sorted(events, key=lambda e: e.at_s)),
    )


def _event(path: Path, index: int, raw: Any) -> ScenarioEvent:
    where = f"{path}: events[{index}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} must be a table")
    at = raw.get("at_s")
    if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
        raise ScenarioError(f"{where}.at_s must be a number >= 0, got {at!r}")
    if ("fault" in raw) == ("clear" in raw):
        raise ScenarioError(f"{where} needs exactly one of 'fault' or 'clear'")
    name = raw.get("fault", raw.get("clear"))
    try:
        fault = Fault(name)
    except ValueError:
        raise ScenarioError(f"{where}: unknown fault {name!r}") from None
    arg, unit = raw.get("arg"), raw.get("unit")
    if arg is not None and not isinstance(arg, int | float):
        raise ScenarioError(f"{where}.arg must be a number, got {arg!r}")
    if unit is not None and not isinstance(unit, int):
        raise ScenarioError(f"{where}.unit must be an integer, got {unit!r}")
    return ScenarioEvent(
        at_s=float(at),
        fault=fault,
        clear="clear" in raw,
        arg=float(arg) if arg is not None else None,
        unit=unit,
    )


class FaultTarget(Protocol):
    """What a scenario acts on: a simulator, or a bank of one-pump simulators."""

    @property
    def clock(self) -> SimClock: ...

    def inject(
        self, fault: Fault | str, arg: float | None = None, *, unit: int | None = None
    ) -> None: ...

    def clear(self, fault: Fault | str, *, unit: int | None = None) -> None: ...


async def play(sim: FaultTarget, scenario: Scenario) -> None:
    """Apply the scenario's events at their simulated times (run it as a named task)."""
    log.info("scenario started", scenario=scenario.name, events=len(scenario.events))
    for event in scenario.events:
        await sim.clock.sleep(event.at_s - sim.clock.now())
        if event.clear:
            sim.clear(event.fault, unit=event.unit)
        else:
            sim.inject(event.fault, event.arg, unit=event.unit)
    log.info("scenario finished", scenario=scenario.name)
