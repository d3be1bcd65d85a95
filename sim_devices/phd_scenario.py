"""Scenarios and ``--faults`` specs on the PHD ULTRA simulator (the shared serial player,
:mod:`sim_devices.serial_scenario`, with the PHD's fault table and error lines).

Refusals (``value`` of ``reject``/``refuse-but-apply``) are one of the pump's error lines
(``OOR``, ``NA``, ``?``, ``Out of range``, ...); the default is ``Out of range``.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from sim_devices import serial_scenario
from sim_devices.phd_pump import Fault, PhdPumpSetup, refusal_text
from sim_devices.phd_server import PhdSimulator
from sim_devices.scenario import Scenario, ScenarioError
from sim_devices.serial_scenario import SPEC_EVENTS, Vendor

EVENTS = SPEC_EVENTS
PHD = Vendor("PHD ULTRA", Fault, refusal_text, "Out of range")
apply_event = functools.partial(serial_scenario.apply_event, PHD)
apply_fault_spec = functools.partial(serial_scenario.apply_fault_spec, PHD)
play = functools.partial(serial_scenario.play, PHD)


def check(sim: PhdSimulator, scenario: Scenario, origin: str) -> None:
    """Refuse, before ``sim`` serves, any event it could not play (a dry run on a copy)."""
    probe = PhdSimulator([p.setup for p in sim.pumps.values()])
    serial_scenario.check(PHD, probe, scenario, origin)


def setups(scenario: Scenario, origin: str) -> list[PhdPumpSetup]:
    """The scenario's ``[[pumps]]`` as PHD pump setups (``pump`` = address, ``vtbi_ml`` = the
    target volume)."""
    out = []
    for i, s in enumerate(scenario.pumps):
        if s.pump > 99:
            raise ScenarioError(f"{origin}: pumps[{i}].pump: a PHD address is 0..99")
        if s.reset_alarm is not None:
            raise ScenarioError(f"{origin}: pumps[{i}].reset_alarm: not a PHD ULTRA field")
        out.append(
            PhdPumpSetup(
                address=s.pump,
                diameter_mm=s.diameter_mm if s.diameter_mm is not None else Decimal("26.59"),
                rate_ml_h=s.rate_ml_h,
                running=s.running,
                target_ml=s.vtbi_ml,
            )
        )
    return out
