"""Faults and timed events for the New Era simulator: CLI fault specs and scenario files.

Fault spec (``--faults``): ``NAME[=VALUE][/COMMAND][@ADDRESS]``, e.g. ``stall@1``,
``slow=2.5``, ``garble``, ``refuse-but-apply=?OOR/RAT``. ``stall`` and ``reset`` happen once at
start; the reply faults (``silence``, ``drop-reply``, ``garble``, ``truncate``,
``wrong-address``, ``overlong``, ``slow=SECONDS``, ``reject=CODE``, ``refuse-but-apply=CODE``,
``hang-up``, ``noise``) stay armed. ``CODE`` is an error reply (``?OOR``, ``?NA``, ...) or an alarm
(``A?R``, ``A?S``, ...); ``reject`` does not execute the command, ``refuse-but-apply`` does.
``/COMMAND`` limits a fault to the replies to that command sent as a write (``/RAT``: rate
changes, not rate queries). Scenario file (TOML): optional ``[[pumps]]`` initial states and
``[[events]]`` with ``at_s`` (simulated seconds), ``pump`` (address, default 0) and ``action``
among ``stall``, ``reset``, ``rate`` (``value`` mL/h, as at the keypad), ``run``, ``stop``,
``fault`` (``fault`` name with its ``=VALUE``, optional ``count`` and ``on`` command) and
``clear-faults``.
"""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from drivers.newera.commands import COMMANDS
from drivers.newera.frames import Alarm
from protocol.errors import InfusiondError
from sim_devices.newera_pump import REFUSALS, Fault, NewEraPumpModel, PumpSetup
from sim_devices.newera_server import NewEraSimulator

EVENTS = ("stall", "reset")


class ScenarioError(InfusiondError):
    """A fault spec or scenario file is wrong; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    pump: int
    action: str
    value: str = ""
    count: int | None = None
    on: str = ""


def _pump(sim: NewEraSimulator, address: int, where: str) -> NewEraPumpModel:
    try:
        return sim.pumps[address]
    except KeyError:
        raise ScenarioError(f"{where}: no simulated pump at address {address}") from None


def apply_fault_spec(sim: NewEraSimulator, spec: str) -> None:
    """Apply one ``--faults`` entry."""
    body, _, addr = spec.partition("@")
    body, _, on = body.partition("/")
    name = body.partition("=")[0]
    try:
        address = int(addr) if addr else 0
    except ValueError:
        raise ScenarioError(f"fault {spec!r}: address {addr!r} is not a number") from None
    if name in EVENTS:
        apply_event(sim, Event(0.0, address, name), spec)
    else:
        apply_event(sim, Event(0.0, address, "fault", body, on=on), spec)


def apply_event(sim: NewEraSimulator, event: Event, where: str) -> None:
    pump = _pump(sim, event.pump, where)
    pump.advance(sim.now())
    if event.action == "stall":
        pump.raise_alarm(Alarm.STALLED)
    elif event.action == "reset":
        pump.power_reset()
    elif event.action == "run":
        pump.front_panel_run()
    elif event.action == "stop":
        pump.front_panel_stop()
    elif event.action == "clear-faults":
        pump.clear_faults()
    elif event.action == "rate":
        pump.front_panel_rate(_decimal(event.value, where, "value"))
    elif event.action == "fault":
        _arm(pump, event, where)
    else:
        raise ScenarioError(f"{where}: unknown action {event.action!r}")


def _arm(pump: NewEraPumpModel, event: Event, where: str) -> None:
    name, _, value = event.value.partition("=")
    try:
        fault = Fault(name)
    except ValueError:
        names = ", ".join([*EVENTS, *(f.value for f in Fault)])
        raise ScenarioError(f"{where}: unknown fault {name!r} (known: {names})") from None
    if fault is Fault.SLOW:
        pump.reply_delay_s = float(_decimal(value or "1", where, "slow seconds"))
    if fault in (Fault.REJECT, Fault.REFUSE_BUT_APPLY):
        if value and value not in REFUSALS:
            raise ScenarioError(f"{where}: {name} code {value!r} is not one of {REFUSALS}")
        pump.reject_with = value or "?IGN"
    on = event.on.upper()
    if on and on not in COMMANDS:
        raise ScenarioError(f"{where}: fault {name!r} on unknown command {event.on!r}")
    pump.inject(fault, event.count, on=on or None)


def _decimal(text: str, where: str, what: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ScenarioError(f"{where}: {what} {text!r} is not a number") from None


def load_scenario(path: Path) -> tuple[list[PumpSetup], list[Event]]:
    """Read a scenario TOML file (see module doc)."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"scenario {path}: {exc}") from exc
    pumps = []
    for i, row in enumerate(raw.get("pumps", [])):
        where = f"{path} pumps[{i}]"
        pumps.append(
            PumpSetup(
                address=int(row.get("address", 0)),
                diameter_mm=_decimal(str(row.get("diameter_mm", "26.59")), where, "diameter_mm"),
                rate_ml_h=_decimal(str(row.get("rate_ml_h", 0)), where, "rate_ml_h"),
                running=bool(row.get("running", False)),
                vtbi_ml=_decimal(str(row.get("vtbi_ml", 0)), where, "vtbi_ml"),
                reset_alarm=bool(row.get("reset_alarm", True)),
            )
        )
    events = []
    for i, row in enumerate(raw.get("events", [])):
        where = f"{path} events[{i}]"
        if "at_s" not in row or "action" not in row:
            raise ScenarioError(f"{where}: needs 'at_s' and 'action'")
        value = row.get("fault", row.get("value", ""))
        events.append(
            Event(
                at_s=float(row["at_s"]),
                pump=int(row.get("pump", 0)),
                action=str(row["action"]),
                value=str(value),
                count=row.get("count"),
                on=str(row.get("on", "")),
            )
        )
    return pumps, sorted(events, key=lambda e: e.at_s)


ACTIONS = ("stall", "reset", "run", "stop", "clear-faults", "rate", "fault")


def check_events(sim: NewEraSimulator, events: list[Event], where: str) -> None:
    """Fail before serving if an event names an unknown action, pump or fault."""
    for i, event in enumerate(events):
        at = f"{where} events[{i}]"
        if event.action not in ACTIONS:
            raise ScenarioError(f"{at}: unknown action {event.action!r} (known: {ACTIONS})")
        _pump(sim, event.pump, at)
        if event.action == "fault":
            name, _, value = event.value.partition("=")
            if name not in {f.value for f in Fault}:
                raise ScenarioError(f"{at}: unknown fault {name!r}")
            refusal = name in (Fault.REJECT.value, Fault.REFUSE_BUT_APPLY.value)
            if refusal and value and value not in REFUSALS:
                raise ScenarioError(f"{at}: {name} code {value!r} is not one of {REFUSALS}")
            if event.on and event.on.upper() not in COMMANDS:
                raise ScenarioError(f"{at}: fault {name!r} on unknown command {event.on!r}")


async def play(sim: NewEraSimulator, events: list[Event], where: str) -> None:
    """Apply ``events`` at their simulated times."""
    for i, event in enumerate(events):
        await sim.clock.sleep(event.at_s - sim.now())
        apply_event(sim, event, f"{where} events[{i}]")
        await asyncio.sleep(0)
