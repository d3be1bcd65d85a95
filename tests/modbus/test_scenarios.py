"""Scenario files drive timed faults on the Modbus simulator's (accelerated) clock."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import AlarmCode, RunState
from sim_devices.modbus_pump import Fault, FaultSpec
from sim_devices.modbus_scenario import apply_event, check, play
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.scenario import ScenarioError, load_scenario, load_scenario_text
from tests.modbus.conftest import demo_pump, serve_rig

SCENARIOS = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios"


def test_shipped_scenarios_load_and_pass_the_modbus_check() -> None:
    """Every shipped modbus-*.toml parses into time-ordered events the simulator can play."""
    files = sorted(SCENARIOS.glob("modbus-*.toml"))
    assert len(files) >= 2
    for path in files:
        scenario = load_scenario(path)
        times = [e.at_s for _, e in scenario.pump_events()]
        assert times == sorted(times)
        assert scenario.events
        check(ModbusPumpSimulator([demo_pump(1)]), scenario, str(path))


@pytest.mark.asyncio
async def test_occlusion_scenario_is_seen_by_the_driver() -> None:
    """At speed 5000 the 5-minute scenario plays in a blink; the driver sees its end state:
    the occlusion alarm still latched (not acknowledged) and the front-panel rate."""
    sim = ModbusPumpSimulator([demo_pump(1)], speed=5000)
    async with serve_rig(sim) as rig:
        await play(sim, load_scenario(SCENARIOS / "modbus-occlusion.toml"))
        status = await rig.driver.read_status()
        assert status.state is RunState.ALARM
        assert AlarmCode.OCCLUSION in status.alarms
        assert status.rate_ml_h == Decimal("40.00")
        assert sim.pump(1).causes == set()  # the cause was cleared at 180 s


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("action = 'fault'\nfault = 'gremlins'", r"events\[0\]\.fault: unknown Modbus fault"),
        ("action = 'fault'\nfault = 'slow_answer'\nvalue = 'x'", "takes a number as value"),
        ("action = 'fault'\nfault = 'busy'\non = 'RAT'", "no 'on' or 'count'"),
        ("action = 'clear'\nfault = 'gremlins'", "unknown Modbus fault 'gremlins'"),
        ("action = 'stall'", r"events\[0\]\.action: 'stall' is not a Modbus pump event"),
        ("action = 'rate'\nrate_ml_h = 5000", "front-panel rate 5000.00 outside 0..999.99"),
        ("action = 'reset'\npump = 2", r"events\[0\]\.pump: no simulated pump 2; unit ids"),
        ("action = 'reset'\npump = 'pump-1'", "no simulated pump 'pump-1'"),
    ],
)
def test_events_the_modbus_simulator_cannot_play_are_refused_before_serving(
    event: str, message: str
) -> None:
    """The check names the file, the event index and the field of what cannot be played."""
    scenario = load_scenario_text(f"name = 'x'\n[[events]]\nat_s = 1\n{event}\n", "s.toml")
    with pytest.raises(ScenarioError, match=message) as info:
        check(ModbusPumpSimulator([demo_pump(1)]), scenario, "s.toml")
    assert str(info.value).startswith("s.toml: events[0]")


def test_fault_names_are_the_cli_spelling() -> None:
    """Faults parse with unit prefix, argument and dashes: the CLI/scenario spelling."""
    assert FaultSpec.parse("2:slow-answer=1.5") == FaultSpec(Fault.SLOW_ANSWER, 1.5, 2)
    with pytest.raises(ValueError, match="needs =RATE"):
        FaultSpec.parse("front_panel_rate")


@pytest.mark.asyncio
async def test_bad_firmware_scenario_ends_with_a_pump_that_behaves_again() -> None:
    """The bad-firmware scenario injects garbage, misexecute and refuse-but-apply and clears
    each: at its end a command is applied as asked."""
    sim = ModbusPumpSimulator([demo_pump(1)], speed=5000)
    async with serve_rig(sim) as rig:
        await play(sim, load_scenario(SCENARIOS / "modbus-bad-firmware.toml"))
        result = await rig.driver.set_rate(Decimal("61.00"))
        assert result.outcome.value == "applied"
        assert sim.pump(1).rate == Decimal("61.00")


def test_an_event_without_pump_acts_on_every_unit_and_clear_without_fault_clears_all() -> None:
    """No ``pump``: every unit; ``clear`` without ``fault``: every fault's cause."""
    sim = ModbusPumpSimulator([demo_pump(1), demo_pump(2)])
    scenario = load_scenario_text(
        "name = 'all'\n"
        "[[events]]\nat_s = 0\naction = 'fault'\nfault = 'occlusion'\n"
        "[[events]]\nat_s = 0\naction = 'fault'\nfault = 'door_open'\npump = 2\n"
        "[[events]]\nat_s = 1\naction = 'clear'\npump = 2\n",
        "all.toml",
    )
    (_, everyone), (_, door), (_, clear) = scenario.pump_events()
    apply_event(sim, everyone, "all.toml")
    apply_event(sim, door, "all.toml")
    assert sim.pump(1).causes == {"occlusion"}
    assert sim.pump(2).causes == {"occlusion", "door_open"}
    apply_event(sim, clear, "all.toml")
    assert (sim.pump(1).causes, sim.pump(2).causes) == ({"occlusion"}, set())
