"""Patient scenarios as TOML files (``sim_devices/scenarios/patient/*.toml``): parameters, events,
dose schedule (used when no pump simulator drives the patient) and monitor faults over time.

Shape (times in simulated minutes)::

    name = "septic-shock-refractory"
    description = "..."
    seed = 7
    [patient]                 # any PatientParams field
    baseline_map = 50
    [[doses]]                 # from at_min on (until the next row)
    at_min = 0
    norepinephrine = 0.1      # ug/kg/min
    vasopressin = 0.03        # [USP'U]/min
    [[events]]                # parameters drift to new values over ramp_min
    at_min = 2
    ramp_min = 30
    set = { baseline_map = 35 }
    [[faults]]                # one-shot monitor faults
    at_min = 10
    fault = "stale-timestamps"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.errors import InfusiondError
from sim_devices.patient_model import PARAM_NAMES, Doses, ParamChange, PatientModel, PatientParams

SCENARIO_DIR = ("scenarios", "patient")  # device scenarios live beside, in scenarios/
_TOP_KEYS = frozenset({"name", "description", "seed", "patient", "doses", "events", "faults"})


class ScenarioError(InfusiondError):
    """A scenario file is unreadable or malformed; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario file."""

    name: str
    description: str = ""
    seed: int = 0
    params: PatientParams = field(default_factory=PatientParams)
    events: Sequence[ParamChange] = ()
    doses: Sequence[tuple[float, Doses]] = ((0.0, Doses()),)
    faults: Sequence[tuple[float, str]] = ()

    def doses_at(self, t_s: float) -> Doses:
        """The scheduled doses at simulated time ``t_s``."""
        current = Doses()
        for at_s, doses in sorted(self.doses, key=lambda d: d[0]):
            if at_s <= t_s:
                current = doses
        return current

    def model(self, seed: int | None = None) -> PatientModel:
        """A fresh patient model for this scenario."""
        return PatientModel(self.params, self.events, seed=self.seed if seed is None else seed)


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where} must be a number, got {value!r}")
    return float(value)


def _minutes(where: str, row: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in row:
        if default is None:
            raise ScenarioError(f"{where}.{key} is missing")
        return default
    value = _number(f"{where}.{key}", row[key])
    if value < 0:
        raise ScenarioError(f"{where}.{key} must be >= 0, got {value}")
    return value * 60.0


def parse_scenario(raw: Mapping[str, Any], origin: str) -> Scenario:
    """Validate a scenario mapping; ScenarioError names ``origin`` and the offending key."""
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ScenarioError(f"{origin}: unknown key(s) {unknown}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{origin}: name must be a non-empty string")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ScenarioError(f"{origin}: seed must be an integer")
    patient = raw.get("patient", {})
    bad = sorted(set(patient) - PARAM_NAMES)
    if bad:
        raise ScenarioError(f"{origin}: patient: unknown parameter(s) {bad}")
    try:
        params = PatientParams(**{k: _number(f"patient.{k}", v) for k, v in patient.items()})
    except ValueError as exc:
        raise ScenarioError(f"{origin}: patient: {exc}") from None
    events = []
    for i, row in enumerate(raw.get("events", [])):
        where = f"{origin}: events[{i}]"
        changes = row.get("set")
        if not isinstance(changes, dict) or not changes:
            raise ScenarioError(f"{where}.set must be a table of parameter = value")
        try:
            events.append(
                ParamChange(
                    at_s=_minutes(where, row, "at_min"),
                    ramp_s=_minutes(where, row, "ramp_min", 0.0),
                    changes={k: _number(f"{where}.set.{k}", v) for k, v in changes.items()},
                )
            )
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    doses = []
    for i, row in enumerate(raw.get("doses", [{"at_min": 0}])):
        where = f"{origin}: doses[{i}]"
        extra = sorted(set(row) - {"at_min", "norepinephrine", "vasopressin"})
        if extra:
            raise ScenarioError(f"{where}: unknown key(s) {extra}")
        ne = _number(f"{where}.norepinephrine", row.get("norepinephrine", 0.0))
        vp = _number(f"{where}.vasopressin", row.get("vasopressin", 0.0))
        if ne < 0 or vp < 0:
            raise ScenarioError(f"{where}: doses must be >= 0")
        doses.append((_minutes(where, row, "at_min"), Doses(ne, vp)))
    faults = []
    for i, row in enumerate(raw.get("faults", [])):
        where = f"{origin}: faults[{i}]"
        fault = row.get("fault")
        if not isinstance(fault, str):
            raise ScenarioError(f"{where}.fault must be a string")
        faults.append((_minutes(where, row, "at_min"), fault))
    return Scenario(
        name=name,
        description=str(raw.get("description", "")),
        seed=seed,
        params=params,
        events=tuple(events),
        doses=tuple(doses),
        faults=tuple(faults),
    )


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario file, or a shipped one by name (``"demo"``, ``"hypertensive-overshoot"``)."""
    path = Path(path_or_name)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from None
        origin = str(path)
    else:
        resource = resources.files("sim_devices").joinpath(*SCENARIO_DIR, f"{path_or_name}.toml")
        if not resource.is_file():
            shipped = ", ".join(shipped_scenarios())
            raise ScenarioError(f"no scenario named {str(path_or_name)!r}; shipped: {shipped}")
        text = resource.read_text(encoding="utf-8")
        origin = f"{path_or_name}.toml"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: not valid TOML: {exc}") from None
    return parse_scenario(raw, origin)


def shipped_scenarios() -> list[str]:
    """Names of the patient scenarios shipped in ``sim_devices/scenarios/patient``."""
    folder = resources.files("sim_devices").joinpath(*SCENARIO_DIR)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )
