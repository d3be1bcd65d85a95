"""A small pharmacodynamic patient: MAP responds to norepinephrine and vasopressin.

Pure: no clock, no I/O; simulated time (seconds) is an argument and the noise comes from a
seeded ``random.Random``. Each drug acts through an *effect-site* dose that follows the
infused dose with a first-order lag (time constant in minutes), and raises MAP along a
saturating Emax curve (``emax * C**h / (ec50**h + C**h)``). Vasopressin adds to the effect of
norepinephrine. SBP/DBP come from MAP and a pulse pressure, HR from a baroreflex slope, SpO2
is stable. Noise is bounded (an AR(1) process of uniform draws never leaves ``+-bound``).

Calibration (the demo bedside, docs/integration-guide.md): with the default parameters,
norepinephrine 0.04-0.08 ug/kg/min plus vasopressin 0.03 [USP'U]/min hold MAP at 73.6-80.0 mmHg
before noise (75.5 at the demo's 0.05), and the MAP noise bound is 2 mmHg, so MAP stays within
65-85 mmHg.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PatientParams:
    """Model parameters; scenario files set any of these by name."""

    baseline_map: float = 55.0  # mm[Hg] with no vasopressor (a patient being weaned)
    ne_emax: float = 40.0  # mm[Hg] at saturation
    ne_ec50: float = 0.1  # ug/kg/min giving half of ne_emax
    ne_hill: float = 1.0
    ne_tau_min: float = 2.0  # effect-site lag
    vp_emax: float = 12.0  # mm[Hg]
    vp_ec50: float = 0.02  # [USP'U]/min
    vp_hill: float = 1.0
    vp_tau_min: float = 5.0
    map_noise: float = 2.0  # bound of MAP noise, mm[Hg]
    pulse_pressure: float = 45.0  # mm[Hg] at MAP 75
    pp_per_map: float = 0.3  # pulse pressure change per mm[Hg] of MAP
    hr_baseline: float = 95.0  # /min at baseline MAP
    hr_per_map: float = -0.3  # baroreflex: /min per mm[Hg] above baseline MAP
    hr_noise: float = 2.0
    spo2_baseline: float = 96.0
    spo2_noise: float = 1.0
    noise_memory: float = 0.7  # AR(1) coefficient in [0, 1): higher = smoother noise

    def __post_init__(self) -> None:
        for name in ("ne_ec50", "vp_ec50", "ne_hill", "vp_hill", "ne_tau_min", "vp_tau_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"patient parameter {name} must be > 0, got {getattr(self, name)}")
        for name in ("map_noise", "hr_noise", "spo2_noise", "ne_emax", "vp_emax"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"patient parameter {name} must be >= 0, got {getattr(self, name)}"
                )
        if not 0 <= self.noise_memory < 1:
            raise ValueError(f"noise_memory must be in [0, 1), got {self.noise_memory}")


PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(PatientParams))


@dataclass(frozen=True, slots=True)
class Doses:
    """What is being infused now, in the library's canonical units."""

    norepinephrine_ug_kg_min: float = 0.0
    vasopressin_u_min: float = 0.0  # [USP'U]/min

    @classmethod
    def from_pump_rates(
        cls,
        *,
        weight_kg: float,
        norepinephrine_ml_h: float = 0.0,
        norepinephrine_ug_ml: float = 4.0,
        vasopressin_ml_h: float = 0.0,
        vasopressin_u_ml: float = 0.2,
    ) -> Doses:
        """Doses from pump rates (dose per min = rate x concentration / 60): 52.5 mL/h of 4 ug/mL
        at 70 kg = 0.05 ug/kg/min; 9.0 mL/h of 0.2 [USP'U]/mL = 0.03 [USP'U]/min."""
        if weight_kg <= 0:
            raise ValueError(f"weight_kg must be > 0, got {weight_kg}")
        return cls(
            norepinephrine_ug_kg_min=norepinephrine_ml_h * norepinephrine_ug_ml / 60.0 / weight_kg,
            vasopressin_u_min=vasopressin_ml_h * vasopressin_u_ml / 60.0,
        )


@dataclass(frozen=True, slots=True)
class ParamChange:
    """From ``at_s`` the named parameters move linearly to new values over ``ramp_s``."""

    at_s: float
    changes: Mapping[str, float]
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.changes) - PARAM_NAMES)
        if unknown:
            raise ValueError(
                f"unknown patient parameter(s) {unknown}; known: {sorted(PARAM_NAMES)}"
            )
        if self.at_s < 0 or self.ramp_s < 0:
            raise ValueError("event times must be >= 0")


@dataclass(frozen=True, slots=True)
class VitalsReading:
    """One noisy reading of the patient (floats; the monitor rounds as a real one would)."""

    map: float
    sbp: float
    dbp: float
    hr: float
    spo2: float


def emax(dose: float, e_max: float, ec50: float, hill: float) -> float:
    """Saturating dose-effect curve; 0 for no dose."""
    if dose <= 0:
        return 0.0
    c = math.pow(dose, hill)
    return e_max * c / (math.pow(ec50, hill) + c)


def map_for(params: PatientParams, ne: float, vp: float) -> float:
    """MAP without noise for effect-site doses ``ne`` (ug/kg/min) and ``vp`` ([USP'U]/min)."""
    return (
        params.baseline_map
        + emax(ne, params.ne_emax, params.ne_ec50, params.ne_hill)
        + emax(vp, params.vp_emax, params.vp_ec50, params.vp_hill)
    )


def steady_state_map(params: PatientParams, doses: Doses) -> float:
    """MAP once the effect sites have caught up with constant ``doses`` (no noise)."""
    return map_for(params, doses.norepinephrine_ug_kg_min, doses.vasopressin_u_min)


def params_at(base: PatientParams, events: Sequence[ParamChange], t_s: float) -> PatientParams:
    """The parameters in force at simulated time ``t_s`` (events applied in time order)."""
    current = base
    for event in sorted(events, key=lambda e: e.at_s):
        if t_s < event.at_s:
            break
        done = 1.0 if event.ramp_s == 0 else min(1.0, (t_s - event.at_s) / event.ramp_s)
        current = dataclasses.replace(
            current,
            **{
                name: getattr(current, name) + (target - getattr(current, name)) * done
                for name, target in event.changes.items()
            },
        )
    return current


@dataclass
class _Noise:
    """Bounded AR(1) noise in [-bound, bound] driven by uniform draws."""

    rng: random.Random
    value: float = 0.0

    def draw(self, bound: float, memory: float) -> float:
        self.value = memory * self.value + (1 - memory) * self.rng.uniform(-1.0, 1.0)
        return self.value * bound


@dataclass
class PatientModel:
    """Stateful integration of the model; call :meth:`advance` with increasing times.

    ``start_at_steady_state`` makes the effect sites start equal to the first doses seen
    (the patient was already on them), so the demo starts in range instead of ramping up.
    """

    params: PatientParams = field(default_factory=PatientParams)
    events: Sequence[ParamChange] = ()
    seed: int = 0
    start_at_steady_state: bool = True
    _t_s: float | None = field(default=None, init=False)
    _ne: float = field(default=0.0, init=False)
    _vp: float = field(default=0.0, init=False)
    _noise: dict[str, _Noise] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)  # noqa: S311 - simulation noise, not cryptography
        self._noise = {k: _Noise(random.Random(rng.random())) for k in ("map", "hr", "spo2")}  # noqa: S311

    @property
    def effect_site(self) -> Doses:
        """Current effect-site doses (what the MAP responds to)."""
        return Doses(self._ne, self._vp)

    def params_now(self, t_s: float) -> PatientParams:
        """Parameters in force at ``t_s``."""
        return params_at(self.params, self.events, t_s)

    def advance(self, t_s: float, doses: Doses) -> VitalsReading:
        """Move to simulated time ``t_s`` with ``doses`` infused since the last call; read."""
        if self._t_s is None:
            if self.start_at_steady_state:
                self._ne, self._vp = doses.norepinephrine_ug_kg_min, doses.vasopressin_u_min
            self._t_s = t_s
        if t_s < self._t_s:
            raise ValueError(f"time went backwards: {t_s} < {self._t_s}")
        p = self.params_now(t_s)
        dt_min = (t_s - self._t_s) / 60.0
        self._ne = _lag(self._ne, doses.norepinephrine_ug_kg_min, dt_min, p.ne_tau_min)
        self._vp = _lag(self._vp, doses.vasopressin_u_min, dt_min, p.vp_tau_min)
        self._t_s = t_s
        clean_map = map_for(p, self._ne, self._vp)
        mean_ap = clean_map + self._noise["map"].draw(p.map_noise, p.noise_memory)
        pulse = max(20.0, p.pulse_pressure + p.pp_per_map * (mean_ap - 75.0))
        dbp = mean_ap - pulse / 3.0
        hr = p.hr_baseline + p.hr_per_map * (clean_map - p.baseline_map)
        hr += self._noise["hr"].draw(p.hr_noise, p.noise_memory)
        spo2 = p.spo2_baseline + self._noise["spo2"].draw(p.spo2_noise, p.noise_memory)
        return VitalsReading(
            map=mean_ap,
            sbp=dbp + pulse,
            dbp=dbp,
            hr=max(0.0, hr),
            spo2=min(100.0, max(0.0, spo2)),
        )


def _lag(current: float, target: float, dt_min: float, tau_min: float) -> float:
    """Exact first-order step with the input held over ``dt_min``."""
    return target + (current - target) * math.exp(-dt_min / tau_min)
