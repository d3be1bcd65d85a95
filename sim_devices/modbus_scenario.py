"""Scenario events on the Modbus pump simulator (the format: :mod:`sim_devices.scenario`).

``fault`` injects a fault of the Modbus fault table (``value`` is its ARG), ``clear`` removes
one fault's cause (or every fault's), ``reset`` is a power reset and ``rate`` a front-panel
rate change; ``pump`` is the unit id (absent: every pump). ``stall``, ``run`` and ``stop`` are
not Modbus events and are refused before the simulator serves, as is an unknown pump or fault.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

import structlog

from sim_devices.clock import SimClock
from sim_devices.modbus_pump import Fault, ModbusPumpSetup
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

log = structlog.get_logger("infusiond.sim.modbus")


class FaultTarget(Protocol):
    """What a scenario acts on: a simulator, or a bank of one-pump simulators."""

    @property
    def clock(self) -> SimClock: ...

    @property
    def unit_ids(self) -> list[int]: ...

    def inject(
        self, fault: Fault | str, arg: float | None = None, *, unit: int | None = None
    ) -> None: ...

    def clear(self, fault: Fault | str, *, unit: int | None = None) -> None: ...


def fault_of(name: str, where: str) -> Fault:
    """The Modbus fault named ``name`` (``-`` and ``_`` alike); ScenarioError lists them."""
    try:
        return Fault(name.replace("-", "_"))
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise ScenarioError(
            f"{where}.fault: unknown Modbus fault {name!r}; known: {known}"
        ) from None


def _unit(target: FaultTarget, event: PumpEvent, where: str) -> int | None:
    if event.pump is None:
        return None
    if isinstance(event.pump, str) or event.pump not in target.unit_ids:
        raise ScenarioError(
            f"{where}.pump: no simulated pump {event.pump!r}; unit ids are {target.unit_ids}"
        )
    return event.pump


def apply_event(target: FaultTarget, event: PumpEvent, where: str) -> None:
    """Apply one event now; ScenarioError (naming ``where`` and the field) if it cannot be."""
    unit = _unit(target, event, where)
    try:
        if isinstance(event, FaultEvent):
            if isinstance(event.value, str) or event.on is not None or event.count is not None:
                raise ScenarioError(
                    f"{where}: a Modbus fault takes a number as value, and no 'on' or 'count'"
                )
            target.inject(fault_of(event.fault, where), event.value, unit=unit)
        elif isinstance(event, ClearEvent):
            faults = [fault_of(event.fault, where)] if event.fault else list(Fault)
            for fault in faults:
                target.clear(fault, unit=unit)
        elif isinstance(event, RateEvent):
            target.inject(Fault.FRONT_PANEL_RATE, float(event.rate_ml_h), unit=unit)
        elif isinstance(event, PanelEvent) and event.action is EventAction.RESET:
            target.inject(Fault.POWER_RESET, unit=unit)
        else:
            raise ScenarioError(
                f"{where}.action: {event.action.value!r} is not a Modbus pump event "
                "(fault, clear, reset, rate)"
            )
    except ValueError as exc:  # the pump model refuses a value (e.g. a rate above max_rate)
        raise ScenarioError(f"{where}: {exc}") from None


def setups(scenario: Scenario, origin: str, serial: str = "SN{:04d}") -> list[ModbusPumpSetup]:
    """The scenario's ``[[pumps]]`` as Modbus pump setups (unit id = ``pump``)."""
    out = []
    for i, state in enumerate(scenario.pumps):
        for name in ("diameter_mm", "reset_alarm"):
            if getattr(state, name) is not None:
                raise ScenarioError(f"{origin}: pumps[{i}].{name}: not a Modbus pump field")
        if not 1 <= state.pump <= 247:
            raise ScenarioError(f"{origin}: pumps[{i}].pump: a unit id is 1..247")
        out.append(
            ModbusPumpSetup(
                unit_id=state.pump,
                status="infusing" if state.running else "stopped",
                rate_ml_h=Decimal(state.rate_ml_h),
                vtbi_ml=Decimal(state.vtbi_ml),
                serial=serial.format(state.pump),
            )
        )
    return out


def check(probe: FaultTarget, scenario: Scenario, origin: str) -> None:
    """Refuse, before serving, an event that names no pump, an unknown fault or a bad value:
    every event is applied once to ``probe`` (a throwaway copy of the simulator)."""
    for index, event in scenario.pump_events():
        apply_event(probe, event, f"{origin}: events[{index}]")


async def play(target: FaultTarget, scenario: Scenario, origin: str = "scenario") -> None:
    """Apply the scenario's pump events at their simulated times (run it as a named task)."""
    log.info("scenario started", scenario=scenario.name, events=len(scenario.events))
    for index, event in scenario.pump_events():
        await target.clock.sleep(event.at_s - target.clock.now())
        apply_event(target, event, f"{origin}: events[{index}]")
    log.info("scenario finished", scenario=scenario.name)
