"""One scenario format for every simulator: what loads, what is refused and how it is named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim_devices.monitor import MonitorFault
from sim_devices.patient_model import PARAM_NAMES
from sim_devices.scenario import (
    ClearEvent,
    DoseStep,
    DriftEvent,
    EventAction,
    FaultEvent,
    MonitorEvent,
    PanelEvent,
    PumpState,
    RateEvent,
    Scenario,
    ScenarioError,
    load_scenario,
    load_scenario_text,
)
from sim_devices.scenario_toml import to_toml

SCENARIOS = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios"
SHIPPED = sorted(SCENARIOS.rglob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_scenario_loads_in_the_one_format(path: Path) -> None:
    """Every shipped file, pump or patient, is a valid scenario named after its file."""
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.description


def test_shipped_scenarios_cover_every_simulator() -> None:
    """There are scenarios for the Modbus, New Era and PHD pumps and for the patient."""
    stems = {p.stem.split("-")[0] for p in SHIPPED if p.parent == SCENARIOS}
    assert {"modbus", "newera", "phd"} <= stems
    assert {p.stem for p in SHIPPED if p.parent.name == "patient"} >= {"demo"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[events]]\nat_s = 1\naction = 'stall'\n", "name: required field is missing"),
        (
            "name = 'x'\n[[events]]\nat_s = -1\naction = 'stall'\n",
            "events[0].at_s: Input should be greater than or equal to 0",
        ),
        ("name = 'x'\n[[events]]\naction = 'stall'\n", "events[0].at_s: required field"),
        (
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'explode'\n",
            "events[0].action: 'explode' is not one of fault, clear, stall",
        ),
        ("name = 'x'\n[[events]]\nat_s = 1\n", "events[0]: needs an action, one of fault"),
        (
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'rate'\ncolour = 3\n",
            "events[0].colour: unknown field for action 'rate' (its fields: action, at_s, pump, r",
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'rate'\nrate_ml_h = 20000\n",
            "events[0].rate_ml_h: Input should be less than or equal to 10000",
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'monitor'\nfault = 'melt'\n",
            "events[0].fault: Input should be 'drop-connection', 'garbled'",
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'drift'\nset = { nope = 1 }\n",
            "events[0].set: unknown patient parameter(s) ['nope']",
        ),
        ("name = 'x'\n[patient]\nne_ec50 = 0\n", "patient: patient parameter ne_ec50 must be > 0"),
        ("name = 'x'\ncolour = 1\n", "colour: unknown field (top-level keys: name, description"),
        (
            "name = 'x'\n[[pumps]]\npump = 1\n[[pumps]]\npump = 1\n",
            "pumps[1].pump: pump 1 is listed twice",
        ),
        ("name = 'x'\n[[doses]]\nat_s = 0\nnorepinephrine = 'a lot'\n", "doses[0].norepinephrine"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_scenarios_name_the_file_the_entry_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    """A wrong file is refused with one error type naming the file, the entry and the field."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    """Several mistakes are reported together, one line each."""
    text = "name = 'x'\n[[events]]\nat_s = -1\naction = 'stall'\n[[events]]\nat_s = 1\n"
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "two.toml")
    lines = str(info.value).splitlines()
    assert lines[0] == "two.toml: 2 problems:"
    assert lines[1].strip().startswith("events[0].at_s:")
    assert lines[2].strip().startswith("events[1]: needs an action")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        (
            "name = 'x'\n[[doses]]\nat_min = 2\n",
            "doses[0].at_min: times are in seconds now: write at_s = 120 for at_min = 2",
        ),
        (
            "name = 'x'\n[[events]]\nat_min = 0.5\nramp_min = 30\nset = { baseline_map = 35 }\n",
            "events[0].ramp_min: times are in seconds now: write ramp_s = 1800 for ramp_min = 30",
        ),
        ("[scenario]\nname = 'x'\n", "the [scenario] table is gone: move its name"),
        (
            "name = 'x'\n[[faults]]\nat_min = 1\nfault = 'garbled'\n",
            '[[faults]] is gone: write monitor faults as [[events]] with action = "monitor"',
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 9\nclear = 'occlusion'\nunit = 1\n",
            "events[0]: write action = \"clear\", fault = 'occlusion' for clear = ...",
        ),
        ("name = 'x'\n[[events]]\nat_s = 9\nfault = 'busy'\n", 'events[0]: add action = "fault"'),
        ("name = 'x'\n[[events]]\nat_s = 9\nunit = 2\nfault = 'busy'\n", "write pump = 2"),
        (
            "name = 'x'\n[[events]]\nat_s = 9\naction = 'fault'\nfault = 'reject=?NA/RAT'\n",
            "write fault = 'reject', value = '?NA', on = 'RAT' for fault = 'reject=?NA/RAT'",
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 9\naction = 'rate'\nvalue = 6.0\n",
            "a front-panel rate is rate_ml_h = 6.0 (not value)",
        ),
        (
            "name = 'x'\n[[events]]\nat_s = 9\naction = 'clear-faults'\n",
            'write action = "clear" (without fault: every fault)',
        ),
        ("name = 'x'\n[[pumps]]\naddress = 3\n", "pumps[0].address: write pump = 3"),
        ("name = 'x'\n[[pumps]]\npump = 3\ntarget_ml = 5\n", "pumps[0].target_ml: write vtbi_ml"),
    ],
)
def test_old_formats_fail_with_how_to_convert(text: str, hint: str) -> None:
    """Files in the formats of earlier versions are refused with the conversion spelled out."""
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "old.toml")
    assert hint in str(info.value)
    assert str(info.value).startswith("old.toml: ")


def test_a_shipped_patient_scenario_is_found_by_name_and_a_missing_one_lists_them() -> None:
    """``--scenario demo`` finds the shipped file; an unknown name lists the shipped ones."""
    assert load_scenario("demo").name == "demo"
    with pytest.raises(ScenarioError, match="no scenario named 'nope'; shipped: demo"):
        load_scenario("nope")


def test_the_patient_follows_the_dose_steps_and_drifts() -> None:
    """Dose steps hold from their at_s on; drift events become the model's parameter changes;
    monitor events are the monitor's faults in time order."""
    scenario = load_scenario_text(
        "name = 'x'\n"
        "[[doses]]\nat_s = 60\nnorepinephrine = 0.1\n"
        "[[doses]]\nat_s = 0\nnorepinephrine = 0.05\n"
        "[[events]]\nat_s = 90\naction = 'monitor'\nfault = 'garbled'\n"
        "[[events]]\nat_s = 30\naction = 'monitor'\nfault = 'truncated'\n"
        "[[events]]\nat_s = 10\naction = 'drift'\nramp_s = 60\nset = { baseline_map = 40 }\n",
        "x.toml",
    )
    assert scenario.doses_at(59).norepinephrine_ug_kg_min == 0.05
    assert scenario.doses_at(60).norepinephrine_ug_kg_min == 0.1
    assert scenario.monitor_faults() == [(30, MonitorFault.TRUNCATED), (90, MonitorFault.GARBLED)]
    assert scenario.model().params.baseline_map == 55.0  # drifts later, from 10 s on


# -- property: any valid scenario round-trips through TOML ---------------------------------------

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
pump_ref = st.one_of(st.none(), st.integers(0, 247), st.text(min_size=1, max_size=12))
ml_h = st.decimals(min_value=0, max_value=10_000, places=2)
text = st.text(max_size=30)
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
fault_value = st.one_of(st.none(), finite, st.text(max_size=10))
fault_name = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True)

events = st.one_of(
    st.builds(
        FaultEvent,
        at_s=seconds,
        pump=pump_ref,
        action=st.just(EventAction.FAULT),
        fault=fault_name,
        value=fault_value,
        on=st.one_of(st.none(), st.from_regex(r"[A-Za-z]{1,8}", fullmatch=True)),
        count=st.one_of(st.none(), st.integers(1, 1000)),
    ),
    st.builds(
        ClearEvent,
        at_s=seconds,
        pump=pump_ref,
        action=st.just(EventAction.CLEAR),
        fault=st.one_of(st.none(), fault_name),
    ),
    st.builds(
        PanelEvent,
        at_s=seconds,
        pump=pump_ref,
        action=st.sampled_from(
            [EventAction.STALL, EventAction.RESET, EventAction.RUN, EventAction.STOP]
        ),
    ),
    st.builds(
        RateEvent, at_s=seconds, pump=pump_ref, action=st.just(EventAction.RATE), rate_ml_h=ml_h
    ),
    st.builds(
        DriftEvent,
        at_s=seconds,
        pump=pump_ref,
        action=st.just(EventAction.DRIFT),
        ramp_s=seconds,
        set=st.dictionaries(st.sampled_from(sorted(PARAM_NAMES)), finite, min_size=1),
    ),
    st.builds(
        MonitorEvent,
        at_s=seconds,
        pump=pump_ref,
        action=st.just(EventAction.MONITOR),
        fault=st.sampled_from(MonitorFault),
    ),
)
pumps = st.lists(
    st.builds(
        PumpState,
        pump=st.integers(0, 247),
        rate_ml_h=ml_h,
        running=st.booleans(),
        vtbi_ml=st.decimals(min_value=0, max_value=100_000, places=3),
        diameter_mm=st.one_of(st.none(), st.decimals(min_value="0.1", max_value=50, places=2)),
        reset_alarm=st.one_of(st.none(), st.booleans()),
    ),
    max_size=4,
    unique_by=lambda p: p.pump,
)
doses = st.builds(
    DoseStep,
    at_s=seconds,
    norepinephrine=st.floats(min_value=0, max_value=10),
    vasopressin=st.floats(min_value=0, max_value=10),
)
scenarios = st.builds(
    Scenario,
    name=st.text(min_size=1, max_size=30),
    description=text,
    seed=st.integers(0, 2**32 - 1),
    patient=st.just({}) | st.fixed_dictionaries({"baseline_map": st.floats(0, 120)}),
    pumps=pumps.map(tuple),
    doses=st.lists(doses, max_size=3).map(tuple),
    events=st.lists(events, max_size=6).map(tuple),
)


@given(scenarios)
def test_any_valid_scenario_round_trips_through_toml(scenario: Scenario) -> None:
    """Written as TOML and read back, a scenario is the same scenario."""
    assert load_scenario_text(to_toml(scenario), "generated.toml") == scenario


def test_decimal_rates_keep_their_exact_value_through_toml() -> None:
    """A front-panel rate written as 52.55 reads back as exactly 52.55 mL/h."""
    scenario = Scenario(
        name="r",
        events=(RateEvent(at_s=1, action=EventAction.RATE, rate_ml_h=Decimal("52.55")),),
    )
    event = load_scenario_text(to_toml(scenario), "r.toml").events[0]
    assert isinstance(event, RateEvent)
    assert event.rate_ml_h == Decimal("52.55")
