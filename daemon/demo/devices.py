"""The demo bedside's simulated devices: built on one clock, banked by pump id for scenarios
(``infusiond demo --scenario FILE``) and for run-time faults over MQTT
(:mod:`sim_devices.fault_topic`, the demo only: ``infusiond run`` never listens there)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import structlog

from sim_devices.clock import SimClock
from sim_devices.fault_topic import FaultControl
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.monitor import Monitor
from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator
from sim_devices.patient_model import Doses
from sim_devices.phd_pump import PhdPumpSetup
from sim_devices.phd_server import PhdSimulator
from sim_devices.scenario import DriftEvent, Scenario, load_scenario
from sim_devices.sim_bank import SimBank, modbus_pump, newera_pump, phd_pump

log = structlog.get_logger("infusiond.demo")

SUBSCRIBE_WAIT_S = 10.0
PHD_ADDRESS = 1
PHD_DIAMETER_MM = Decimal("26.59")
NE_RATE_ML_H = Decimal("52.5")
VP_RATE_ML_H = Decimal("9.0")


@dataclass(frozen=True, slots=True)
class DemoDevices:
    """pump-1 and pump-3.. (Modbus units 1, 3..), pump-2 (New Era address 0), pump-phd."""

    modbus: ModbusPumpSimulator
    newera: NewEraSimulator
    phd_chain: PhdSimulator

    @classmethod
    def build(cls, pumps: int, clock: SimClock) -> DemoDevices:
        """The demo's simulators, as at power-on, on ``clock``."""
        modbus = ModbusPumpSimulator(
            [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=NE_RATE_ML_H)]
            + [
                ModbusPumpSetup(unit_id=k, status="infusing", rate_ml_h=NE_RATE_ML_H)
                for k in range(3, pumps + 1)
            ],
            clock=clock,
        )
        newera = NewEraSimulator(
            [NewEraPumpSetup(address=0, rate_ml_h=VP_RATE_ML_H, running=True, reset_alarm=False)],
            clock=clock,
        )
        phd_chain = PhdSimulator(
            [
                PhdPumpSetup(
                    address=PHD_ADDRESS,
                    diameter_mm=PHD_DIAMETER_MM,
                    rate_ml_h=NE_RATE_ML_H,
                    running=True,
                )
            ],
            clock=clock,
        )
        return cls(modbus, newera, phd_chain)

    def bank(self, *, phd: bool, monitor: Monitor | None) -> SimBank:
        """The devices by pump id (the ids of the demo configuration)."""
        pumps = {"pump-1": modbus_pump(self.modbus, 1), "pump-2": newera_pump(self.newera, 0)}
        pumps.update({f"pump-{k}": modbus_pump(self.modbus, k) for k in self.modbus.unit_ids[1:]})
        if phd:
            pumps["pump-phd"] = phd_pump(self.phd_chain, PHD_ADDRESS)
        return SimBank(pumps, monitor)


def demo_scenario(path: Path, *, pumps: int, phd: bool) -> Scenario:
    """Load ``path`` and refuse it now if the demo could not play it (a dry run of every event
    on throwaway copies of the demo's simulators); ScenarioError names the file and event."""
    scenario = load_scenario(path)
    probe = DemoDevices.build(pumps, SimClock())
    monitor = Monitor(scenario.model(), dose_source=Doses)
    probe.bank(phd=phd, monitor=monitor).check(scenario, str(path))
    return scenario


def patient_of(scenario: Scenario | None) -> Scenario:
    """The scenario whose patient the demo's monitor simulates: the file's when it sets
    patient parameters or drifts, else the shipped ``demo`` patient."""
    if scenario is not None and (
        scenario.patient or any(isinstance(e, DriftEvent) for e in scenario.events)
    ):
        return scenario
    return load_scenario("demo")


@contextlib.asynccontextmanager
async def sim_control(
    bank: SimBank, faults: FaultControl, scenario: Scenario | None, clock: SimClock
) -> AsyncIterator[None]:
    """Run the run-time fault listener (and the scenario's player) while the demo runs; enters
    once the listener is subscribed (or after :data:`SUBSCRIBE_WAIT_S`, with a warning)."""
    tasks = [asyncio.create_task(faults.run(), name="demo-sim-faults")]
    if scenario is not None:
        player = bank.play(scenario, clock, scenario.name)
        tasks.append(asyncio.create_task(player, name="demo-scenario"))
    for task in tasks:
        task.add_done_callback(_report_failure)
    try:
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_S):
                await faults.subscribed.wait()
        except TimeoutError:
            log.warning(
                "sim fault topics not subscribed yet", broker=f"{faults.host}:{faults.port}"
            )
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("demo simulator task failed", task=task.get_name(), error=str(error))
