"""Scenario events and ``--faults`` specs on the serial pump simulators (New Era, PHD ULTRA).

The format is :mod:`sim_devices.scenario`; this module plays it on a chain of serial pump
models. ``pump`` is the address (absent: the first pump of the chain). ``fault`` arms a reply
fault (``value``: seconds for ``slow``, the refusal for ``reject``/``refuse-but-apply``; ``on``
limits it to one command's writes, ``count`` to that many replies); ``clear`` disarms one fault
or, without ``fault``, every one; ``stall``, ``reset``, ``run``, ``stop`` and ``rate`` act at
the pump. A ``--faults`` spec ``NAME[=VALUE][/COMMAND][@ADDRESS]`` is the same event, now.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from pydantic import ValidationError

from sim_devices.clock import SimClock
from sim_devices.scenario import (
    ClearEvent,
    EventAction,
    FaultEvent,
    PanelEvent,
    PumpEvent,
    RateEvent,
    Scenario,
    ScenarioError,
)

#: ``--faults`` names that are one-off events rather than reply faults
SPEC_EVENTS = ("stall", "reset", "panel-rate")


class SerialPump(Protocol):
    """What a serial pump model offers a scenario."""

    faults: Any  # dict[the vendor's Fault, int | None]
    fault_on: Any  # dict[the vendor's Fault, str]
    reply_delay_s: float
    reject_with: str

    @property
    def command_names(self) -> Collection[str]: ...

    def advance(self, now: float) -> None: ...
    def command_key(self, name: str) -> str: ...
    def inject(self, fault: Any, count: int | None = None, *, on: str | None = None) -> None: ...
    def clear_faults(self) -> None: ...
    def stall(self) -> None: ...
    def power_reset(self) -> None: ...
    def front_panel_run(self) -> None: ...
    def front_panel_stop(self) -> None: ...
    def front_panel_rate(self, rate_ml_h: Decimal) -> None: ...


class SerialChain(Protocol):
    """A serial simulator: pump models by address on one clock."""

    @property
    def pumps(self) -> Mapping[int, SerialPump]: ...

    @property
    def clock(self) -> SimClock: ...


@dataclass(frozen=True, slots=True)
class Vendor:
    """How a vendor's simulator differs: its fault table and its refusals."""

    name: str
    faults: type[enum.Enum]
    refusal: Callable[[str], str]  # the refusal text, or ValueError naming the allowed ones
    default_refusal: str


def _pump(sim: SerialChain, ref: int | str | None, where: str) -> SerialPump:
    address = min(sim.pumps) if ref is None else ref
    if isinstance(address, str) or address not in sim.pumps:
        raise ScenarioError(f"{where}: no simulated pump at address {address}")
    return sim.pumps[address]


def apply_event(vendor: Vendor, sim: SerialChain, event: PumpEvent, where: str) -> None:
    """Apply one event now; ScenarioError naming ``where`` and the field if it cannot be."""
    pump = _pump(sim, event.pump, where)
    pump.advance(sim.clock.now())
    if isinstance(event, FaultEvent):
        _arm(vendor, pump, event, where)
    elif isinstance(event, ClearEvent):
        if event.fault is None:
            pump.clear_faults()
        else:
            fault = _fault(vendor, event.fault, where)
            pump.faults.pop(fault, None)
            pump.fault_on.pop(fault, None)
    elif isinstance(event, RateEvent):
        try:
            pump.front_panel_rate(event.rate_ml_h)
        except ValueError as exc:
            raise ScenarioError(f"{where}.rate_ml_h: {exc}") from None
    elif isinstance(event, PanelEvent):
        {
            EventAction.STALL: pump.stall,
            EventAction.RESET: pump.power_reset,
            EventAction.RUN: pump.front_panel_run,
            EventAction.STOP: pump.front_panel_stop,
        }[event.action]()


def _fault(vendor: Vendor, name: str, where: str) -> enum.Enum:
    try:
        return vendor.faults(name)
    except ValueError:
        known = ", ".join([*SPEC_EVENTS, *(f.value for f in vendor.faults)])
        raise ScenarioError(
            f"{where}: unknown fault {name!r} of the {vendor.name} simulator (known: {known})"
        ) from None


def _arm(vendor: Vendor, pump: SerialPump, event: FaultEvent, where: str) -> None:
    fault = _fault(vendor, event.fault, where)
    name, value = fault.value, event.value
    if value is not None and name not in ("slow", "reject", "refuse-but-apply"):
        raise ScenarioError(f"{where}.value: {name} takes no value")
    if event.on is not None and pump.command_key(event.on) not in pump.command_names:
        raise ScenarioError(f"{where}.on: fault {name!r} on unknown command {event.on!r}")
    if name == "slow":
        try:
            seconds = float(value) if value is not None else 1.0
        except ValueError:
            raise ScenarioError(f"{where}.value: slow takes seconds, got {value!r}") from None
        if not 0 <= seconds <= 60:
            raise ScenarioError(f"{where}.value: slow takes 0..60 seconds, got {seconds:g}")
        pump.reply_delay_s = seconds
    elif name in ("reject", "refuse-but-apply"):
        try:
            pump.reject_with = vendor.refusal(
                vendor.default_refusal if value is None else str(value)
            )
        except ValueError as exc:
            raise ScenarioError(f"{where}.value: {name} {exc}") from None
    pump.inject(fault, event.count, on=event.on)


def parse_fault_spec(spec: str) -> PumpEvent:
    """``NAME[=VALUE][/COMMAND][@ADDRESS]`` as the event it stands for (at time 0)."""
    body, _, addr = spec.partition("@")
    body, _, on = body.partition("/")
    name, _, value = body.partition("=")
    try:
        pump = int(addr) if addr else None
    except ValueError:
        raise ScenarioError(f"fault {spec!r}: address {addr!r} is not a number") from None
    if name in ("stall", "reset"):
        return PanelEvent(at_s=0, pump=pump, action=EventAction(name))
    try:
        if name == "panel-rate":
            return RateEvent(at_s=0, pump=pump, action=EventAction.RATE, rate_ml_h=Decimal(value))
        return FaultEvent(
            at_s=0,
            pump=pump,
            action=EventAction.FAULT,
            fault=name,
            value=value or None,
            on=on or None,
        )
    except ArithmeticError:
        raise ScenarioError(f"fault {spec!r}: panel-rate takes mL/h, e.g. panel-rate=7.5") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"fault {spec!r}: {field}: {first['msg']}") from None


def apply_fault_spec(vendor: Vendor, sim: SerialChain, spec: str) -> None:
    """Apply one ``--faults`` entry now."""
    apply_event(vendor, sim, parse_fault_spec(spec), f"fault {spec!r}")


def check(vendor: Vendor, probe: SerialChain, scenario: Scenario, origin: str) -> None:
    """Refuse, before serving, an event naming no pump, an unknown fault or a bad value: each
    event is applied once to ``probe`` (a throwaway copy of the simulator)."""
    for index, event in scenario.pump_events():
        apply_event(vendor, probe, event, f"{origin}: events[{index}]")


async def play(vendor: Vendor, sim: SerialChain, scenario: Scenario, origin: str) -> None:
    """Apply the scenario's pump events at their simulated times."""
    for index, event in scenario.pump_events():
        await sim.clock.sleep(event.at_s - sim.clock.now())
        apply_event(vendor, sim, event, f"{origin}: events[{index}]")
        await asyncio.sleep(0)
