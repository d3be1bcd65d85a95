"""Scenario files drive timed faults on the simulator's (accelerated) clock."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import AlarmCode, RunState
from sim_devices.modbus_pump import Fault, FaultSpec
from sim_devices.modbus_scenario import ScenarioError, load_scenario, play
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import demo_pump, serve_rig

SCENARIOS = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios"


def test_shipped_scenarios_load() -> None:
    """Every shipped modbus-*.toml parses into time-ordered events."""
    files = sorted(SCENARIOS.glob("modbus-*.toml"))
    assert len(files) >= 2
    for path in files:
        scenario = load_scenario(path)
        times = [e.at_s for e in scenario.events]
        assert times == sorted(times)
        assert scenario.events


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
    ("text", "message"),
    [
        ("[[events]]\nat_s = -1\nfault = 'occlusion'\n", r"events\[0\]\.at_s"),
        ("[[events]]\nat_s = 1\nfault = 'gremlins'\n", "unknown fault 'gremlins'"),
        ("[[events]]\nat_s = 1\n", "exactly one of 'fault' or 'clear'"),
        ("[[events]]\nat_s = 1\nfault = 'slow_answer'\narg = 'x'\n", r"\.arg must be"),
        ("[[events\n", "Expected"),
    ],
)
def test_bad_scenarios_name_the_event(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


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
