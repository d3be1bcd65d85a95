"""Timed events for the PHD ULTRA simulator: scenario files (``--scenario``).

Scenario file (TOML): optional ``[[pumps]]`` initial states (``address``, ``diameter_mm``,
``rate_ml_h``, ``running``, ``target_ml``) and ``[[events]]`` with ``at_s`` (simulated seconds),
``pump`` (address, default 0) and ``action`` among ``stall``, ``reset`` (power reset), ``rate``
(``value`` mL/h, at the touch screen), ``run``, ``stop``, ``fault`` (``fault`` = a reply fault
spec as for ``--faults``, e.g. ``"refuse-but-apply=OOR/irate"``) and ``clear-faults``.
Every event is checked before the simulator serves. Also the ``--faults`` spec parser:
``NAME[=VALUE][/COMMAND][@ADDRESS]`` (see :mod:`sim_devices.phd_cli`).
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from protocol.errors import InfusiondError
from sim_devices.phd_pump import Fault, PhdPumpModel, PumpSetup, refusal_text
from sim_devices.phd_server import PhdSimulator

ACTIONS = ("stall", "reset", "rate", "run", "stop", "fault", "clear-faults")
#: one-off events of a ``--faults`` spec
EVENTS = ("stall", "reset", "panel-rate")


class FaultSpecError(InfusiondError):
    """A ``--faults`` entry is wrong; the message names it and the problem."""


def apply_fault_spec(sim: PhdSimulator, spec: str) -> None:
    """Apply one ``--faults`` entry (see the module doc)."""
    body, _, addr = spec.partition("@")
    body, _, on = body.partition("/")
    name, _, value = body.partition("=")
    try:
        address = int(addr) if addr else 0
    except ValueError:
        raise FaultSpecError(f"fault {spec!r}: address {addr!r} is not a number") from None
    pump = sim.pumps.get(address)
    if pump is None:
        raise FaultSpecError(f"fault {spec!r}: no simulated pump at address {address}")
    if name in EVENTS:
        _event(pump, name, value, spec)
        return
    try:
        fault = Fault(name)
    except ValueError:
        known = ", ".join([*EVENTS, *(f.value for f in Fault)])
        raise FaultSpecError(f"fault {spec!r}: unknown fault {name!r} (known: {known})") from None
    if value and fault not in (Fault.SLOW, Fault.REJECT, Fault.REFUSE_BUT_APPLY):
        raise FaultSpecError(f"fault {spec!r}: {name} takes no value")
    try:
        if fault is Fault.SLOW:
            pump.reply_delay_s = float(value or "1.0")
        elif fault in (Fault.REJECT, Fault.REFUSE_BUT_APPLY):
            pump.reject_with = refusal_text(value or "Out of range")
        pump.inject(fault, None, on=on or None)
    except ValueError as exc:
        raise FaultSpecError(f"fault {spec!r}: {exc}") from None


def _event(pump: PhdPumpModel, name: str, value: str, spec: str) -> None:
    if name == "stall":
        pump.stall()
    elif name == "reset":
        pump.power_reset()
    else:
        try:
            pump.front_panel_rate(Decimal(value))
        except InvalidOperation:
            raise FaultSpecError(f"fault {spec!r}: panel-rate takes mL/h") from None


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    pump: int
    action: str
    value: str = ""


def _decimal(row: dict[str, Any], key: str, default: str, where: str) -> Decimal:
    try:
        return Decimal(str(row.get(key, default)))
    except InvalidOperation:
        raise FaultSpecError(f"{where}: {key} {row.get(key)!r} is not a number") from None


def load_scenario(path: Path) -> tuple[list[PumpSetup], list[Event]]:
    """Read a scenario file; FaultSpecError naming the file, entry and field."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FaultSpecError(f"scenario {path}: {exc}") from exc
    pumps = [
        PumpSetup(
            address=int(row.get("address", 0)),
            diameter_mm=_decimal(row, "diameter_mm", "26.59", f"{path} pumps[{i}]"),
            rate_ml_h=_decimal(row, "rate_ml_h", "0", f"{path} pumps[{i}]"),
            running=bool(row.get("running", False)),
            target_ml=_decimal(row, "target_ml", "0", f"{path} pumps[{i}]"),
        )
        for i, row in enumerate(raw.get("pumps", []))
    ]
    events = []
    for i, row in enumerate(raw.get("events", [])):
        where = f"{path} events[{i}]"
        if "at_s" not in row or "action" not in row:
            raise FaultSpecError(f"{where}: needs 'at_s' and 'action'")
        if row["action"] not in ACTIONS:
            raise FaultSpecError(f"{where}: unknown action {row['action']!r} (known: {ACTIONS})")
        value = str(row.get("fault", row.get("value", "")))
        events.append(Event(float(row["at_s"]), int(row.get("pump", 0)), row["action"], value))
    return pumps, sorted(events, key=lambda e: e.at_s)


def apply_event(sim: PhdSimulator, event: Event, where: str) -> None:
    """Apply one event now (FaultSpecError naming ``where`` when it cannot be)."""
    pump = sim.pumps.get(event.pump)
    if pump is None:
        raise FaultSpecError(f"{where}: no simulated pump at address {event.pump}")
    pump.advance(sim.clock.now())
    if event.action == "fault":
        apply_fault_spec(sim, f"{event.value}@{event.pump}")
    elif event.action == "rate":
        apply_fault_spec(sim, f"panel-rate={event.value}@{event.pump}")
    elif event.action in ("stall", "reset"):
        apply_fault_spec(sim, f"{event.action}@{event.pump}")
    elif event.action == "run":
        pump.front_panel_run()
    elif event.action == "stop":
        pump.front_panel_stop()
    else:
        pump.clear_faults()


def check_events(sim: PhdSimulator, events: list[Event], where: str) -> None:
    """Fail before serving if an event names a missing pump or a bad fault (dry run)."""
    probe = PhdSimulator([p.setup for p in sim.pumps.values()])
    for i, event in enumerate(events):
        apply_event(probe, event, f"{where} events[{i}]")


async def play(sim: PhdSimulator, events: list[Event], where: str) -> None:
    """Apply ``events`` at their simulated times."""
    for i, event in enumerate(events):
        await sim.clock.sleep(event.at_s - sim.clock.now())
        apply_event(sim, event, f"{where} events[{i}]")
        await asyncio.sleep(0)
