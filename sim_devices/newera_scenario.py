"""Scenarios and ``--faults`` specs on the New Era simulator (the shared serial player,
:mod:`sim_devices.serial_scenario`, with New Era's fault table and refusal codes).

Refusals (``value`` of ``reject``/``refuse-but-apply``) are an error code in the data (``?OOR``,
``?NA``, ...) or an alarm in place of the status (``A?R``, ``A?S``, ...); the default is ``?IGN``.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from sim_devices import serial_scenario
from sim_devices.newera_pump import REFUSALS, Fault, NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator
from sim_devices.scenario import Scenario, ScenarioError
from sim_devices.serial_scenario import SPEC_EVENTS, Vendor

EVENTS = SPEC_EVENTS


def _refusal(code: str) -> str:
    if code not in REFUSALS:
        raise ValueError(f"code {code!r} is not one of {REFUSALS}")
    return code


NEW_ERA = Vendor("New Era", Fault, _refusal, "?IGN")
apply_event = functools.partial(serial_scenario.apply_event, NEW_ERA)
apply_fault_spec = functools.partial(serial_scenario.apply_fault_spec, NEW_ERA)
play = functools.partial(serial_scenario.play, NEW_ERA)


def check(sim: NewEraSimulator, scenario: Scenario, origin: str) -> None:
    """Refuse, before ``sim`` serves, any event it could not play (a dry run on a copy)."""
    probe = NewEraSimulator([p.setup for p in sim.pumps.values()])
    serial_scenario.check(NEW_ERA, probe, scenario, origin)


def setups(scenario: Scenario, origin: str) -> list[NewEraPumpSetup]:
    """The scenario's ``[[pumps]]`` as New Era pump setups (``pump`` = address)."""
    out = []
    for i, s in enumerate(scenario.pumps):
        if s.pump > 99:
            raise ScenarioError(f"{origin}: pumps[{i}].pump: a New Era address is 0..99")
        out.append(
            NewEraPumpSetup(
                address=s.pump,
                diameter_mm=s.diameter_mm if s.diameter_mm is not None else Decimal("26.59"),
                rate_ml_h=s.rate_ml_h,
                running=s.running,
                vtbi_ml=s.vtbi_ml,
                reset_alarm=True if s.reset_alarm is None else s.reset_alarm,
            )
        )
    return out
