"""The one scenario format of every simulator (docs/biomed-guide.md, "Scenario files").

A scenario is a TOML file: a name, optional initial pump states, a patient (model parameters,
a dose schedule) and timed events. Every time is in simulated **seconds** (``at_s``,
``ramp_s``), so ``--speed 60`` plays an hour in a minute. The Modbus, New Era and PHD ULTRA
simulators, the monitor and ``infusiond demo --scenario`` read the same models; each simulator
then refuses, before it serves, the events it cannot play (an unknown fault name, a missing
pump) with the file, the event index and the field named.

Validation is pydantic (as for the library and the configuration); files in the formats of
earlier versions (``at_min``, a ``[scenario]`` table, ``clear = "..."``, ``[[faults]]``) fail
with a message that says how to convert them.
"""

from __future__ import annotations

import enum
import math
import tomllib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from protocol.errors import InfusiondError
from sim_devices.monitor import MonitorFault
from sim_devices.patient_model import PARAM_NAMES, Doses, ParamChange, PatientModel, PatientParams

SCENARIO_DIR = ("scenarios", "patient")  # shipped patient scenarios; pump ones in scenarios/
MAX_SCENARIO_BYTES = 1024 * 1024


class ScenarioError(InfusiondError):
    """A scenario (file, event or fault) is wrong; the message names the file, entry and field."""


class EventAction(enum.StrEnum):
    """What a timed event does."""

    FAULT = "fault"  # inject a fault (a name of that simulator's fault table)
    CLEAR = "clear"  # remove one fault's cause, or every fault
    STALL = "stall"  # the motor stalls (syringe pumps)
    RESET = "reset"  # power reset
    RUN = "run"  # someone starts the pump at its front panel
    STOP = "stop"  # someone stops it at its front panel
    RATE = "rate"  # someone sets the rate at the front panel (rate_ml_h)
    DRIFT = "drift"  # patient parameters drift to new values over ramp_s
    MONITOR = "monitor"  # a one-shot fault of the monitor's next message


PANEL_ACTIONS = (EventAction.STALL, EventAction.RESET, EventAction.RUN, EventAction.STOP)
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: a pump: its address / unit id for a simulator, its pump id (``"pump-1"``) in the demo
PumpRef = Annotated[int, Field(ge=0, le=247)] | Annotated[str, Field(min_length=1, max_length=64)]
#: a fault of the simulator's table: a name, no ``=VALUE``/``/COMMAND`` (those are fields)
FaultName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
MlPerHour = Annotated[Decimal, Field(ge=0, le=10_000, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Event(_Model):
    at_s: Seconds
    pump: PumpRef | None = None  # None: every pump (Modbus) or the first one (serial chains)


class FaultEvent(_Event):
    """Inject ``fault``; ``value`` is its argument (Modbus ARG, serial ``slow`` seconds or the
    refusal code of ``reject``/``refuse-but-apply``); ``on`` and ``count`` limit serial faults."""

    action: Literal[EventAction.FAULT]
    fault: FaultName
    value: float | Annotated[str, Field(max_length=64)] | None = None
    on: Annotated[str, Field(pattern=r"^[A-Za-z]{1,8}$")] | None = None
    count: Annotated[int, Field(ge=1)] | None = None

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class ClearEvent(_Event):
    """Remove ``fault``'s cause (latched alarms stay until acknowledged); no fault: every one."""

    action: Literal[EventAction.CLEAR]
    fault: FaultName | None = None


class PanelEvent(_Event):
    """``stall``, ``reset``, ``run`` or ``stop`` at the pump."""

    action: Literal[EventAction.STALL, EventAction.RESET, EventAction.RUN, EventAction.STOP]


class RateEvent(_Event):
    """Someone sets the rate at the pump's front panel."""

    action: Literal[EventAction.RATE]
    rate_ml_h: MlPerHour


class DriftEvent(_Event):
    """Patient parameters drift linearly to the values in ``set`` over ``ramp_s``."""

    action: Literal[EventAction.DRIFT]
    ramp_s: Seconds = 0.0
    set: dict[str, float] = Field(min_length=1)

    @field_validator("set")
    @classmethod
    def _known(cls, changes: dict[str, float]) -> dict[str, float]:
        return _patient_values(changes)


class MonitorEvent(_Event):
    """One monitor fault, applied to the next message."""

    action: Literal[EventAction.MONITOR]
    fault: MonitorFault


Event = Annotated[
    FaultEvent | ClearEvent | PanelEvent | RateEvent | DriftEvent | MonitorEvent,
    Field(discriminator="action"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
PumpEvent = FaultEvent | ClearEvent | PanelEvent | RateEvent
PUMP_EVENTS = (FaultEvent, ClearEvent, PanelEvent, RateEvent)


class PumpState(_Model):
    """Initial state of one simulated pump (fields a device does not have are refused)."""

    pump: Annotated[int, Field(ge=0, le=247)]  # address (serial) or unit id (Modbus)
    rate_ml_h: MlPerHour = Decimal(0)
    running: bool = False
    vtbi_ml: Annotated[Decimal, Field(ge=0, le=100_000, allow_inf_nan=False)] = Decimal(0)
    diameter_mm: Annotated[Decimal, Field(gt=0, le=50, allow_inf_nan=False)] | None = None
    reset_alarm: bool | None = None  # New Era: hold A?R until the first command


class DoseStep(_Model):
    """From ``at_s`` on (until the next step) the patient receives these doses."""

    at_s: Seconds
    norepinephrine: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.0  # ug/kg/min
    vasopressin: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.0  # [USP'U]/min


class Scenario(_Model):
    """A parsed scenario: what every simulator reads."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=2000)] = ""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    patient: dict[str, float] = Field(default_factory=dict)
    pumps: tuple[PumpState, ...] = ()
    doses: tuple[DoseStep, ...] = ()
    events: tuple[Event, ...] = ()

    @field_validator("patient")
    @classmethod
    def _patient(cls, values: dict[str, float]) -> dict[str, float]:
        values = _patient_values(values)
        PatientParams(**values)  # its ValueError names the parameter and its limit
        return values

    @model_validator(mode="after")
    def _distinct_pumps(self) -> Scenario:
        seen: set[int] = set()
        for i, state in enumerate(self.pumps):
            if state.pump in seen:
                raise ValueError(f"pumps[{i}].pump: pump {state.pump} is listed twice")
            seen.add(state.pump)
        return self

    def timeline(self) -> list[tuple[int, Event]]:
        """``(index in the file, event)`` in time order (ties keep the file's order)."""
        return sorted(enumerate(self.events), key=lambda pair: pair[1].at_s)

    @property
    def params(self) -> PatientParams:
        """The patient model's parameters (defaults for the ones not set)."""
        return PatientParams(**self.patient)

    def model(self, seed: int | None = None) -> PatientModel:
        """A fresh patient model for this scenario (its drift events included)."""
        drifts = [
            ParamChange(at_s=e.at_s, ramp_s=e.ramp_s, changes=dict(e.set))
            for e in self.events
            if isinstance(e, DriftEvent)
        ]
        return PatientModel(self.params, drifts, seed=self.seed if seed is None else seed)

    def doses_at(self, t_s: float) -> Doses:
        """The scheduled doses at simulated time ``t_s`` (none before the first step)."""
        current = Doses()
        for step in sorted(self.doses, key=lambda d: d.at_s):
            if step.at_s <= t_s:
                current = Doses(step.norepinephrine, step.vasopressin)
        return current

    def monitor_faults(self) -> list[tuple[float, MonitorFault]]:
        """The monitor faults, as ``(at_s, fault)`` in time order."""
        return [(e.at_s, e.fault) for _, e in self.timeline() if isinstance(e, MonitorEvent)]

    def pump_events(self) -> Iterator[tuple[int, PumpEvent]]:
        """The events that act on pumps, with their index in the file, in time order."""
        for index, event in self.timeline():
            if isinstance(event, PUMP_EVENTS):
                yield index, event


def _patient_values(values: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(values) - PARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown patient parameter(s) {unknown}; known: {sorted(PARAM_NAMES)}")
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number")
    return dict(values)


# -- loading ------------------------------------------------------------------------------------


def parse_scenario(raw: Mapping[str, Any], origin: str) -> Scenario:
    """Validate a scenario mapping; ScenarioError names ``origin``, the entry and the field."""
    legacy = list(_legacy_problems(raw))
    if legacy:
        raise ScenarioError(_listing(origin, legacy))
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(_listing(origin, [_describe(e, raw) for e in exc.errors()])) from None


def parse_event(raw: Mapping[str, Any], origin: str) -> Event:
    """Validate one event (a run-time fault); ScenarioError names ``origin`` and each field."""
    try:
        return _EVENT.validate_python(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = ("events", 0, *error["loc"])
            text = _describe({**error, "loc": loc}, {"events": [raw]})
            problems.append(text.removeprefix("events[0]").lstrip(".: ") or text)
        raise ScenarioError(_listing(origin, problems)) from None


def load_scenario_text(text: str, origin: str) -> Scenario:
    """Parse TOML text (``origin`` names it in errors)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: not valid TOML: {exc}") from None
    return parse_scenario(raw, origin)


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario file, or a shipped patient scenario by name (``"demo"``)."""
    path = Path(path_or_name)
    if path.suffix == ".toml" or path.exists():
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SCENARIO_BYTES + 1)
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from None
        if len(data) > MAX_SCENARIO_BYTES:
            raise ScenarioError(f"{path}: larger than {MAX_SCENARIO_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScenarioError(f"{path}: not UTF-8 at byte {exc.start}") from None
        return load_scenario_text(text, str(path))
    resource = resources.files("sim_devices").joinpath(*SCENARIO_DIR, f"{path_or_name}.toml")
    if not resource.is_file():
        shipped = ", ".join(shipped_scenarios())
        raise ScenarioError(f"no scenario named {str(path_or_name)!r}; shipped: {shipped}")
    return load_scenario_text(resource.read_text(encoding="utf-8"), f"{path_or_name}.toml")


def shipped_scenarios() -> list[str]:
    """Names of the patient scenarios shipped in ``sim_devices/scenarios/patient``."""
    folder = resources.files("sim_devices").joinpath(*SCENARIO_DIR)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def _listing(origin: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{origin}: {problems[0]}"
    return f"{origin}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)


def _describe(error: ErrorDetails, raw: Mapping[str, Any]) -> str:
    loc = list(error["loc"])
    # a discriminated union puts the tag in the location: events.3.fault.value -> events[3].value
    if len(loc) >= 3 and loc[0] == "events" and isinstance(loc[1], int):
        row = _row(raw, "events", loc[1])
        if row is not None and loc[2] == row.get("action"):
            del loc[2]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = error["type"]
    if kind == "union_tag_invalid":
        return f"{where}.action: {error['input'].get('action')!r} is not one of {_ACTIONS}"
    if kind == "union_tag_not_found":
        return f"{where}: needs an action, one of {_ACTIONS}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field{_extra_hint(loc, raw)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error['input']!r})" if where else message


_ACTIONS = ", ".join(a.value for a in EventAction)
_FIELDS_BY_ACTION: dict[str, type[_Model]] = {
    EventAction.FAULT.value: FaultEvent,
    EventAction.CLEAR.value: ClearEvent,
    EventAction.RATE.value: RateEvent,
    EventAction.DRIFT.value: DriftEvent,
    EventAction.MONITOR.value: MonitorEvent,
    **{a.value: PanelEvent for a in PANEL_ACTIONS},
}


def _extra_hint(loc: list[int | str], raw: Mapping[str, Any]) -> str:
    if len(loc) == 3 and loc[0] == "events" and isinstance(loc[1], int):
        row = _row(raw, "events", loc[1]) or {}
        model = _FIELDS_BY_ACTION.get(str(row.get("action")))
        if model is not None:
            allowed = ", ".join(n for n in model.model_fields if n != "action")
            return f" for action {row.get('action')!r} (its fields: action, {allowed})"
    if len(loc) == 3 and loc[0] == "pumps":
        return f" (pump fields: {', '.join(PumpState.model_fields)})"
    if len(loc) == 1:
        return f" (top-level keys: {', '.join(Scenario.model_fields)})"
    return ""


def _row(raw: Mapping[str, Any], table: str, index: int) -> dict[str, Any] | None:
    rows = raw.get(table)
    if isinstance(rows, list) and index < len(rows):
        row = rows[index]
        if isinstance(row, dict):
            return row
    return None


def _seconds(minutes: Any) -> str:
    if isinstance(minutes, int | float) and not isinstance(minutes, bool):
        seconds = minutes * 60
        return f"{int(seconds)}" if float(seconds).is_integer() else f"{seconds:g}"
    return "MINUTES * 60"


def _legacy_problems(raw: Mapping[str, Any]) -> Iterator[str]:
    """How to convert a file written in one of the older scenario formats."""
    if isinstance(raw.get("scenario"), dict):
        yield (
            "the [scenario] table is gone: move its name = ... and description = ... to the top "
            "of the file"
        )
    if "faults" in raw:
        yield (
            '[[faults]] is gone: write monitor faults as [[events]] with action = "monitor", '
            'fault = "NAME" and at_s in seconds'
        )
    for table in ("doses", "events", "faults"):
        rows = raw.get(table)
        if not isinstance(rows, list):
            continue
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                continue
            for key in ("at_min", "ramp_min"):
                if key in row:
                    new = key.replace("_min", "_s")
                    yield (
                        f"{table}[{i}].{key}: times are in seconds now: write "
                        f"{new} = {_seconds(row[key])} for {key} = {row[key]!r}"
                    )
            if table == "events":
                yield from _legacy_event(i, row)
    for i, row in enumerate(raw.get("pumps") or []):
        if isinstance(row, dict) and "address" in row:
            yield f"pumps[{i}].address: write pump = {row['address']!r} (address or unit id)"
        if isinstance(row, dict) and "target_ml" in row:
            yield f"pumps[{i}].target_ml: write vtbi_ml = {row['target_ml']!r}"


def _legacy_event(i: int, row: Mapping[str, Any]) -> Iterator[str]:
    action = row.get("action")
    if "clear" in row and "action" not in row:
        yield f'events[{i}]: write action = "clear", fault = {row["clear"]!r} for clear = ...'
    elif "fault" in row and "action" not in row:
        yield f'events[{i}]: add action = "fault" (fault = {row["fault"]!r})'
    if "unit" in row:
        yield f"events[{i}].unit: write pump = {row['unit']!r}"
    if "arg" in row:
        yield f"events[{i}].arg: write value = {row['arg']!r}"
    if action == "clear-faults":
        yield f'events[{i}]: write action = "clear" (without fault: every fault) for "clear-faults"'
    if action == "rate" and "value" in row:
        yield f"events[{i}]: a front-panel rate is rate_ml_h = {row['value']!r} (not value)"
    fault = row.get("fault")
    if action == "fault" and isinstance(fault, str) and ("=" in fault or "/" in fault):
        body, _, on = fault.partition("/")
        name, _, value = body.partition("=")
        parts = [f"fault = {name!r}"]
        if value:
            parts.append(f"value = {value!r}")
        if on:
            parts.append(f"on = {on!r}")
        yield f"events[{i}].fault: write {', '.join(parts)} for fault = {fault!r}"
