"""Check requests (docs/check.md) built from a channel's context: the plan of one command (its
action, request and fingerprint), the program a ``program`` command sets, and the judgement of
a rate seen at the device.

The request is handed to ``protocol/`` as the JSON-shaped object its contract defines and
validated there in one pass (:func:`protocol.request.parse_request`, the check's edge): a value
the model refuses (a pump whose min_rate is above its max_rate, too many line shares) is named
by its full path (``pump: ...``) exactly as ``infusiond check`` names it, which the nested
models built one by one here would not do. The already validated history entries are reused
as models (see :meth:`CheckRequests._history_entry`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from pydantic import ValidationError

from daemon.base.payload import JsonObject
from daemon.base.quantities import RATE_UNIT
from daemon.base.timefmt import at_ms
from daemon.core.channel import Channel
from daemon.core.program import Action, Program
from daemon.mqtt.command_parse import Command, CommandAction
from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.library import Library
from protocol.request import CheckRequest, HistoryEntry, parse_request

#: validated history entries kept for reuse (64 per pump at most are in use at a time)
HISTORY_MODELS_MAX = 16_384
VitalsLookup = Callable[[str | None], JsonObject | None]
"""bed -> the ``vitals`` of its check requests (None without readings)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one command asks, as the library checks it."""

    action: Action
    request: CheckRequest
    fingerprint: str
    program: Program | None


def commanded_program(library: Library, running: Program, cmd: Command) -> Program:
    """The program a ``program`` command sets (the bed's context stays that of ``running``)."""
    p = cmd.program
    if p is None:  # pragma: no cover - command_parse guarantees it for action program
        raise RequestError("program: missing")
    entry = library.drug(p.profile, p.drug)
    return Program(
        drug=p.drug,
        concentration=Decimal(str(p.concentration.value)),
        concentration_unit=p.concentration.unit,
        dose_unit=entry.dose_unit if entry is not None else p.dose.unit,
        diluent=p.diluent,
        route=p.route,
        profile=p.profile,
        weight_kg=Decimal(str(p.weight_kg)) if p.weight_kg is not None else None,
        line_shares=running.line_shares,
        bed=running.bed,
        baseline_sbp=running.baseline_sbp,
        chronic_hypertension=running.chronic_hypertension,
    )


@dataclass
class CheckRequests:
    """Builds check requests for the pumps of one gateway."""

    channels: dict[str, Channel]
    vitals_for: VitalsLookup = lambda _bed: None
    #: check-request history entries already validated (see _history_entry)
    _history_models: dict[tuple[datetime, str, str], HistoryEntry] = field(default_factory=dict)

    def plan(self, library: Library, channel: Channel, cmd: Command, now: datetime) -> Plan:
        """The plan of ``cmd`` at ``channel``; RequestError when it cannot be checked."""
        program = channel.program
        new_program: Program | None = None
        current = channel.current_dose()
        requested: JsonObject  # the request's ``requested``, also spelled in the fingerprint
        action = Action.SET_RATE
        if cmd.action is CommandAction.SET_DOSE and cmd.dose is not None:
            requested = {"dose": {"value": cmd.dose.value, "unit": cmd.dose.unit}}
        elif cmd.action is CommandAction.SET_RATE and cmd.rate is not None:
            requested = {"rate": {"value": cmd.rate.value, "unit": cmd.rate.unit}}
        elif cmd.action in (CommandAction.STOP, CommandAction.PAUSE):
            requested = {"action": "stop"}
            action = Action.STOP if cmd.action is CommandAction.STOP else Action.PAUSE
        elif cmd.action is CommandAction.START:
            action = Action.START
            rate = channel.status.rate_ml_h if channel.status else Decimal(0)
            requested = {"rate": {"value": rate, "unit": RATE_UNIT}}
            current = None  # starting is a new infusion: START_RANGE applies
        elif cmd.action is CommandAction.PROGRAM and cmd.program is not None:
            p = cmd.program
            if channel.status is not None and channel.status.state.value == "infusing":
                raise RequestError(
                    "program: the pump is infusing; stop it before programming a new infusion"
                )
            new_program = commanded_program(library, program, cmd)
            program = new_program
            current = None
            requested = {"dose": {"value": p.dose.value, "unit": p.dose.unit}}
        else:  # pragma: no cover - command_parse guarantees the fields of each action
            raise RequestError(f"action: {cmd.action} is missing its parameters")
        request = self.build_request(channel, program, now, current, requested)
        fingerprint = f"{cmd.action}|{requested}|{cmd.program.model_dump() if cmd.program else ''}"
        return Plan(action, parse_request(request), fingerprint, new_program)

    def _history_entry(self, at: datetime, dose: Decimal, unit: str) -> HistoryEntry | JsonObject:
        """One past dose of the check request, validated once and then reused: a pump's
        history (up to 64 changes) goes into every check of it, and validating it anew cost
        ~0.7 ms per command (docs/performance.md). Unchanged semantics: the same model the
        request's parser builds; one it refuses stays a dict, for the parser to name."""
        key = (at, str(dose), unit)
        entry = self._history_models.get(key)
        if entry is None:
            item = {"at": at_ms(at), "dose": {"value": dose, "unit": unit}}
            try:
                entry = HistoryEntry.model_validate(item)
            except ValidationError:
                return item
            if len(self._history_models) >= HISTORY_MODELS_MAX:
                self._history_models.clear()
            self._history_models[key] = entry
        return entry

    def build_request(
        self,
        channel: Channel,
        program: Program,
        now: datetime,
        current: Decimal | None,
        requested: JsonObject,
    ) -> JsonObject:
        """The check request (docs/check.md) for ``channel``, for commands and observations."""
        caps = channel.driver.capabilities
        patient: JsonObject = {"chronic_hypertension": program.chronic_hypertension}
        if program.weight_kg is not None:
            patient["weight_kg"] = program.weight_kg
        if program.baseline_sbp is not None:
            patient["baseline_sbp"] = program.baseline_sbp
        others = []
        for other in self.channels.values():
            if other is channel or other.program.bed != program.bed or program.bed is None:
                continue
            dose = other.current_dose()
            if dose is not None:
                others.append(
                    {
                        "drug": other.program.drug,
                        "dose": {"value": dose, "unit": other.program.dose_unit},
                    }
                )
        return {
            # datetimes, not text: the same instants as format_ts spells, ~7 us less each
            "now": at_ms(now),
            "profile": program.profile,
            "patient": patient,
            "infusion": {
                "drug": program.drug,
                "concentration": {
                    "value": program.concentration,
                    "unit": program.concentration_unit,
                },
                "diluent": program.diluent,
                "route": program.route,
                "line_shares": list(program.line_shares),
            },
            "current": (None if current is None else {"value": current, "unit": program.dose_unit}),
            "requested": requested,
            "history": [
                self._history_entry(h.at, h.dose, program.dose_unit) for h in channel.history
            ],
            "vitals": self.vitals_for(program.bed),
            "other_infusions": others,
            "pump": {
                "min_rate": caps.min_rate_ml_h,
                "max_rate": caps.max_rate_ml_h,
                "resolution": caps.resolution_ml_h,
            },
        }

    def observe(
        self, library: Library, channel: Channel, old: Decimal, new: Decimal, now: datetime
    ) -> JsonObject | None:
        """Judge a rate seen at the device by the rules of a command (``current`` = the rate
        before it). Returns the verdict, its findings cut to those of severity confirm or
        reject, when there is any; None when the library would accept the change outright."""
        current = channel.dose_at(channel.program, old)
        request = self.build_request(
            channel,
            channel.program,
            now,
            current,
            {"rate": {"value": new, "unit": RATE_UNIT}},
        )
        verdict = evaluate(library, parse_request(request))
        data = verdict.to_dict()
        serious = [f for f in data["findings"] if f["severity"] in ("confirm", "reject")]
        if not serious:
            return None
        return {**data, "findings": serious}
