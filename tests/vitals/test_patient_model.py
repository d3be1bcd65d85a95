"""The patient model: calibrated for the demo (MAP 65-85), lagged, saturating, bounded noise;
scenarios leave the 65-85 range as they are meant to."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_devices.patient_model import (
    Doses,
    ParamChange,
    PatientModel,
    PatientParams,
    steady_state_map,
)
from sim_devices.scenario import ScenarioError, load_scenario, shipped_scenarios

DEMO = Doses(norepinephrine_ug_kg_min=0.05, vasopressin_u_min=0.03)


def _run(model: PatientModel, doses: Doses, minutes: float, step_s: float = 5.0) -> list[float]:
    maps = []
    t = 0.0
    while t <= minutes * 60:
        maps.append(model.advance(t, doses).map)
        t += step_s
    return maps


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("ne", [0.04, 0.05, 0.06, 0.07, 0.08])
def test_demo_doses_hold_map_between_65_and_85_including_noise(seed: int, ne: float) -> None:
    """Norepinephrine 0.04-0.08 with vasopressin 0.03: every reading for 30 min is in 65-85."""
    model = load_scenario("demo").model(seed=seed)
    maps = _run(model, Doses(ne, 0.03), minutes=30, step_s=10)
    assert all(65 <= m <= 85 for m in maps), (min(maps), max(maps))


def test_demo_steady_state_is_near_75() -> None:
    """At the demo doses MAP settles near 75 and a 0.01 titration moves it by about 2."""
    params = load_scenario("demo").params
    assert 72 <= steady_state_map(params, DEMO) <= 78
    up = steady_state_map(params, Doses(0.06, 0.03)) - steady_state_map(params, DEMO)
    assert 1 < up < 3


def test_norepinephrine_acts_with_a_first_order_delay() -> None:
    """After a step up the effect site is ~63% there after one time constant; MAP follows."""
    params = PatientParams(map_noise=0, ne_tau_min=2.0)
    model = PatientModel(params, seed=1)
    start = model.advance(0.0, Doses(0.05, 0.03)).map
    target = steady_state_map(params, Doses(0.2, 0.03))
    at_tau = model.advance(120.0, Doses(0.2, 0.03)).map
    effect = model.effect_site.norepinephrine_ug_kg_min
    assert (effect - 0.05) / (0.2 - 0.05) == pytest.approx(1 - 0.3679, abs=1e-3)
    assert start == pytest.approx(steady_state_map(params, Doses(0.05, 0.03)))
    assert start < at_tau < target
    assert model.advance(900.0, Doses(0.2, 0.03)).map == pytest.approx(target, abs=0.1)


def test_response_saturates_at_high_doses() -> None:
    """Doubling an already high dose adds little: the Emax curve flattens."""
    p = PatientParams()
    low_gain = steady_state_map(p, Doses(0.1, 0)) - steady_state_map(p, Doses(0.05, 0))
    high_gain = steady_state_map(p, Doses(2.0, 0)) - steady_state_map(p, Doses(1.0, 0))
    assert high_gain < low_gain / 3
    assert steady_state_map(p, Doses(100.0, 0)) < p.baseline_map + p.ne_emax


def test_doses_from_the_demo_pump_rates() -> None:
    """52.5 mL/h of 4 ug/mL at 70 kg and 9.0 mL/h of 0.2 [USP'U]/mL are the demo doses."""
    doses = Doses.from_pump_rates(weight_kg=70, norepinephrine_ml_h=52.5, vasopressin_ml_h=9.0)
    assert doses.norepinephrine_ug_kg_min == pytest.approx(0.05)
    assert doses.vasopressin_u_min == pytest.approx(0.03)
    with pytest.raises(ValueError, match="weight_kg"):
        Doses.from_pump_rates(weight_kg=0)


def test_vasopressin_adds_to_norepinephrine() -> None:
    """Vasopressin raises MAP on top of the same norepinephrine dose."""
    p = PatientParams()
    assert steady_state_map(p, Doses(0.05, 0.03)) > steady_state_map(p, Doses(0.05, 0)) + 5


@given(seed=st.integers(0, 2**32), bound=st.floats(0, 5))
@settings(max_examples=50)
def test_noise_is_bounded(seed: int, bound: float) -> None:
    """MAP never strays from its noiseless value by more than the noise bound."""
    params = PatientParams(map_noise=bound)
    model = PatientModel(params, seed=seed)
    clean = steady_state_map(params, DEMO)
    for m in _run(model, DEMO, minutes=10, step_s=15):
        assert abs(m - clean) <= bound + 1e-9


def test_same_seed_same_readings_and_derived_values_are_plausible() -> None:
    """A seed reproduces a run; SBP > MAP > DBP, HR and SpO2 in physiological ranges."""
    a = [PatientModel(seed=3).advance(t, DEMO) for t in (0.0,)]
    b = [PatientModel(seed=3).advance(t, DEMO) for t in (0.0,)]
    assert a == b
    model = PatientModel(seed=3)
    for t in range(0, 1800, 30):
        r = model.advance(float(t), DEMO)
        assert r.sbp > r.map > r.dbp > 30
        assert 50 < r.hr < 130
        assert 90 <= r.spo2 <= 100


def test_time_cannot_go_backwards() -> None:
    """The model refuses a time earlier than the last one."""
    model = PatientModel()
    model.advance(10, DEMO)
    with pytest.raises(ValueError, match="backwards"):
        model.advance(5, DEMO)


def test_events_ramp_parameters_linearly() -> None:
    """A ParamChange moves a parameter linearly over its ramp and holds it after."""
    event = ParamChange(at_s=60, ramp_s=120, changes={"baseline_map": 35.0})
    model = PatientModel(PatientParams(baseline_map=55), events=[event])
    assert model.params_now(0).baseline_map == 55
    assert model.params_now(120).baseline_map == pytest.approx(45)
    assert model.params_now(1000).baseline_map == 35


@pytest.mark.parametrize("ne", [0.1, 0.2, 0.3])
def test_septic_shock_scenario_is_refractory_to_norepinephrine(ne: float) -> None:
    """After vasoplegia sets in, norepinephrine 0.1-0.3 + vasopressin leave MAP below 65."""
    scenario = load_scenario("septic-shock-refractory")
    model = scenario.model()
    maps = _run(model, Doses(ne, 0.03), minutes=60, step_s=30)
    assert maps[0] >= 65  # starts responsive
    assert max(maps[-20:]) < 65


def test_hypertensive_overshoot_scenario_exceeds_85_at_demo_doses() -> None:
    """A sensitive patient on the demo doses overshoots MAP 85 within minutes."""
    scenario = load_scenario("hypertensive-overshoot")
    model = scenario.model()
    maps = _run(model, scenario.doses_at(0), minutes=10)
    assert min(maps[-10:]) > 85


def test_every_shipped_scenario_loads() -> None:
    """The shipped scenario files are valid."""
    names = shipped_scenarios()
    assert {"demo", "septic-shock-refractory", "hypertensive-overshoot"} <= set(names)
    for name in names:
        assert load_scenario(name).name == name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[patient]\nbaseline = 50\n', "unknown patient parameter(s) ['baseline']"),
        ('name = "x"\n[patient]\nne_ec50 = 0\n', "ne_ec50 must be > 0"),
        (
            'name = "x"\n[[events]]\naction = "drift"\nat_s = 1\nset = { nope = 1 }\n',
            "events[0].set: unknown patient",
        ),
        ('name = "x"\n[[doses]]\nat_s = -1\n', "doses[0].at_s: Input should be greater than"),
        (
            'name = "x"\n[[doses]]\nat_s = 0\nnorepinephrine = "a lot"\n',
            "doses[0].norepinephrine: Input should be a valid number",
        ),
        ('name = "x"\ncolour = 1\n', "colour: unknown field"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_scenario_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """A wrong scenario file fails with the file and the offending key named."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
