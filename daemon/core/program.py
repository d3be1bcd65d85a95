"""What a pump infuses and for whom (:class:`Program`) and the dose it delivers at a rate
(:func:`dose_at`), what a verified command asks of it (:class:`Action`), and the
``program_changed`` event (:class:`ProgramChanged`) that journals a program so that a restart
rebuilds it from the journal rather than from the configuration file."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from daemon.base.errors import PayloadError
from daemon.base.events import EventType, PumpEvent
from daemon.base.payload import JsonObject, obj, optional_decimal, optional_text, required, text
from daemon.base.quantities import Quantity
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


@dataclass(frozen=True, slots=True)
class ProgramChanged(PumpEvent):
    """The ``program_changed`` event: what the pump now infuses, and for whom. It carries every
    field of the program, so that a restart rebuilds the program from the journal
    (:func:`program_from_event`) instead of from the configuration file."""

    TYPE: ClassVar[EventType] = EventType.PROGRAM_CHANGED
    command_id: str
    program: Program

    def to_json(self) -> JsonObject:
        program = self.program
        return {
            "type": self.TYPE.value,
            "command_id": self.command_id,
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
                # text: a blood pressure is compared, never published as a measurement
                "baseline_sbp": (
                    str(program.baseline_sbp) if program.baseline_sbp is not None else None
                ),
                "chronic_hypertension": program.chronic_hypertension,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProgramChanged:
        """The event back from the journal; fields an older event did not carry take the
        program's defaults (a restart seeds them from the configuration instead)."""
        return cls(text(data, "command_id", "event"), program_from_event(data, None))


def program_from_event(event: Mapping[str, Any], seed: Program | None) -> Program:
    """The program a journaled ``program_changed`` event set; fields an older event did not
    carry come from ``seed`` (the bed's context from the configuration; None: the defaults of
    :class:`Program`). Raises :class:`PayloadError` (a ValueError) naming the field on an event
    that does not describe a program."""
    where = "event.program"
    data = obj(event, "program", "event")
    conc = Quantity.from_json(
        required(data, "concentration", where), where=f"{where}.concentration"
    )
    shares = data.get("line_shares", seed.line_shares if seed else ())
    if not isinstance(shares, list | tuple) or not all(isinstance(s, str) for s in shares):
        raise PayloadError(f"{where}.line_shares: expected a list of strings, got {shares!r}")
    hypertension = data.get("chronic_hypertension", seed.chronic_hypertension if seed else False)
    if not isinstance(hypertension, bool):
        raise PayloadError(f"{where}.chronic_hypertension: expected true or false")
    return Program(
        drug=text(data, "drug", where),
        concentration=Decimal(str(conc.value)),
        concentration_unit=conc.unit,
        dose_unit=text(data, "dose_unit", where),
        diluent=text(data, "diluent", where),
        route=text(data, "route", where),
        profile=text(data, "profile", where),
        weight_kg=optional_decimal(data, "weight_kg", where),
        line_shares=tuple(shares),
        bed=optional_text(data, "bed", where) if "bed" in data else (seed.bed if seed else None),
        baseline_sbp=(
            optional_decimal(data, "baseline_sbp", where)
            if "baseline_sbp" in data
            else (seed.baseline_sbp if seed else None)
        ),
        chronic_hypertension=hypertension,
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
