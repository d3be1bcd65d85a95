"""The simulated devices of one bedside by name: where scenario events and run-time faults go.

``infusiond demo`` runs a Modbus simulator, a New Era chain, a PHD chain and a monitor; a
scenario (``demo --scenario FILE``) or a fault sent at run time names a pump by its pump id
(``pump = "pump-1"``), and the bank applies the event to the simulator and address behind that
id. Monitor events go to the monitor. Patient drifts are part of the patient model built at
start, so they are refused at run time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from sim_devices import modbus_scenario, newera_scenario, phd_scenario
from sim_devices.clock import SimClock
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.monitor import Monitor
from sim_devices.newera_server import NewEraSimulator
from sim_devices.phd_server import PhdSimulator
from sim_devices.scenario import (
    PUMP_EVENTS,
    DriftEvent,
    Event,
    MonitorEvent,
    PumpEvent,
    Scenario,
    ScenarioError,
)

log = structlog.get_logger("infusiond.sim.bank")

#: applies one event (``pump`` already rewritten to the device address) or raises ScenarioError
PumpApply = Callable[[PumpEvent, str], None]


def modbus_pump(sim: ModbusPumpSimulator, unit: int) -> PumpApply:
    """Pump ``unit`` of a Modbus simulator."""
    return lambda event, where: modbus_scenario.apply_event(
        sim, event.model_copy(update={"pump": unit}), where
    )


def newera_pump(sim: NewEraSimulator, address: int) -> PumpApply:
    """The New Era pump at ``address``."""
    return lambda event, where: newera_scenario.apply_event(
        sim, event.model_copy(update={"pump": address}), where
    )


def phd_pump(sim: PhdSimulator, address: int) -> PumpApply:
    """The PHD ULTRA pump at ``address``."""
    return lambda event, where: phd_scenario.apply_event(
        sim, event.model_copy(update={"pump": address}), where
    )


class SimBank:
    """Simulated pumps by pump id, and the bedside monitor."""

    def __init__(self, pumps: Mapping[str, PumpApply], monitor: Monitor | None = None) -> None:
        self.pumps = dict(pumps)
        self.monitor = monitor

    def apply(self, event: Event, where: str) -> None:
        """Apply ``event`` now; ScenarioError (naming ``where`` and the field) if it cannot be."""
        if isinstance(event, MonitorEvent):
            if self.monitor is None:
                raise ScenarioError(f"{where}: there is no simulated monitor here")
            self.monitor.inject(event.fault)
            log.info("monitor fault queued", fault=event.fault.value)
        elif isinstance(event, DriftEvent):
            raise ScenarioError(
                f"{where}.action: a patient drift is part of a scenario file, not a run-time fault"
            )
        elif isinstance(event, PUMP_EVENTS):
            known = ", ".join(self.pumps)
            if not isinstance(event.pump, str):
                raise ScenarioError(f"{where}.pump: name the pump by its id, one of {known}")
            target = self.pumps.get(event.pump)
            if target is None:
                raise ScenarioError(
                    f"{where}.pump: no simulated pump {event.pump!r}; pumps: {known}"
                )
            target(event, where)
            log.info("sim event applied", pump=event.pump, action=event.action.value)

    def check(self, scenario: Scenario, origin: str) -> None:
        """Refuse a scenario this bank cannot play, before anything runs (call it on a bank of
        throwaway simulators: every event is applied once, in time order)."""
        if scenario.pumps:
            raise ScenarioError(
                f"{origin}: pumps: the demo's pumps are fixed; [[pumps]] are for one simulator"
            )
        if scenario.doses:
            raise ScenarioError(
                f"{origin}: doses: the demo's patient follows what its pumps deliver; "
                "[[doses]] are for infusiond sim monitor"
            )
        for index, event in scenario.timeline():
            if not isinstance(event, DriftEvent):
                self.apply(event, f"{origin}: events[{index}]")

    async def play(self, scenario: Scenario, clock: SimClock, origin: str) -> None:
        """Apply the scenario's pump and monitor events at their simulated times."""
        log.info("scenario started", scenario=scenario.name, events=len(scenario.events))
        for index, event in scenario.timeline():
            if isinstance(event, DriftEvent):
                continue  # in the patient model since the start
            await clock.sleep(event.at_s - clock.now())
            self.apply(event, f"{origin}: events[{index}]")
            await asyncio.sleep(0)
        log.info("scenario finished", scenario=scenario.name)
