"""What a pump infuses and for whom (:class:`Program`) and the dose it delivers at a rate
(:func:`dose_at`), what a verified command asks of it
(:class:`Action`), and the ``program_changed`` event that journals a program so that a restart
rebuilds it from the journal rather than from the configuration file."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from protocol.units import UnitError, concentration_unit, dose_unit, rate_to_dose


class Action(enum.Enum):
    """What a verified command asks the device to do."""

    SET_RATE = "set_rate"
    START = "start"
    STOP = "stop"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class Program:
    """What is in the bag and for whom: the context every rate is checked against."""

    drug: str
    concentration: Decimal
    concentration_unit: str
    dose_unit: str
    diluent: str
    route: str
    profile: str
    weight_kg: Decimal | None = None
    line_shares: tuple[str, ...] = ()
    bed: str | None = None
    baseline_sbp: Decimal | None = None
    chronic_hypertension: bool = False


def program_changed(command_id: str, program: Program) -> dict[str, Any]:
    """The ``program_changed`` event: what the pump now infuses, and for whom. It carries every
    field of the program, so that a restart rebuilds the program from the journal
    (:func:`program_from_event`) instead of from the configuration file."""
    return {
        "type": "program_changed",
        "command_id": command_id,
        "program": {
            "drug": program.drug,
            "concentration": {
                "value": float(program.concentration),
                "unit": program.concentration_unit,
            },
            "dose_unit": program.dose_unit,
            "diluent": program.diluent,
            "route": program.route,
            "profile": program.profile,
            "weight_kg": float(program.weight_kg) if program.weight_kg is not None else None,
            "line_shares": list(program.line_shares),
            "bed": program.bed,
            "baseline_sbp": str(program.baseline_sbp) if program.baseline_sbp is not None else None,
            "chronic_hypertension": program.chronic_hypertension,
        },
    }


def program_from_event(event: dict[str, Any], seed: Program) -> Program:
    """The program a journaled ``program_changed`` event set; fields an older event did not
    carry come from ``seed`` (the bed's context from the configuration). Raises ValueError
    (or a subclass) on an event that does not describe a program."""
    data = event["program"]
    conc = data["concentration"]
    weight = data.get("weight_kg")
    baseline = data.get("baseline_sbp", seed.baseline_sbp)
    return Program(
        drug=str(data["drug"]),
        concentration=Decimal(str(conc["value"])),
        concentration_unit=str(conc["unit"]),
        dose_unit=str(data["dose_unit"]),
        diluent=str(data["diluent"]),
        route=str(data["route"]),
        profile=str(data["profile"]),
        weight_kg=Decimal(str(weight)) if weight is not None else None,
        line_shares=tuple(data.get("line_shares", seed.line_shares)),
        bed=data.get("bed", seed.bed),
        baseline_sbp=Decimal(str(baseline)) if baseline is not None else None,
        chronic_hypertension=bool(data.get("chronic_hypertension", seed.chronic_hypertension)),
    )


def dose_at(program: Program, rate_ml_h: Decimal) -> Decimal | None:
    """The dose (in the program's dose unit) delivered at ``rate_ml_h``; None if not computable."""
    try:
        return rate_to_dose(
            rate_ml_h,
            dose_unit(program.dose_unit),
            program.concentration,
            concentration_unit(program.concentration_unit),
            program.weight_kg,
        )
    except UnitError:
        return None
