"""PHD scenario files and --faults specs drive the simulated chain as documented."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.phd.grammar import Prompt
from sim_devices.phd_pump import Fault
from sim_devices.phd_scenario import apply_fault_spec, check, play, setups
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator
from sim_devices.scenario import ScenarioError, load_scenario

STALL = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios" / "phd-stall.toml"


@pytest.mark.asyncio
async def test_shipped_stall_scenario_plays_on_the_accelerated_clock() -> None:
    """Stall at 120 s, touch-screen run at 180 s, rate 40 mL/h at 240 s, refusals from 300 s."""
    scenario = load_scenario(STALL)
    sim = PhdSimulator(setups(scenario, str(STALL)), speed=2400)
    check(sim, scenario, str(STALL))
    pump = sim.pumps[1]
    assert (pump.rate_ml_h, pump.prompt) == (Decimal("52.5"), Prompt.INFUSING)
    async with sim.serving("tcp://127.0.0.1:0"):
        player = asyncio.create_task(play(sim, scenario, str(STALL)), name="scenario")
        await sim.wait_until(lambda: pump.prompt is Prompt.STALLED, within_s=2)
        await player
    assert (pump.rate_ml_h, pump.prompt) == (Decimal(40), Prompt.INFUSING)
    assert sim.pumps[2].fault_on == {Fault.REFUSE_BUT_APPLY: "irate"}
    assert sim.pumps[2].reject_with == "Out of range"


def test_fault_specs_name_pump_value_and_problems() -> None:
    """NAME[=VALUE][/COMMAND][@ADDRESS]; unknown names, values or pumps name the spec."""
    sim = PhdSimulator([PhdPumpSetup(address=0), PhdPumpSetup(address=1)])
    apply_fault_spec(sim, "slow=1.5@1")
    assert sim.pumps[1].reply_delay_s == 1.5
    apply_fault_spec(sim, "panel-rate=7.5")
    assert sim.pumps[0].rate_ml_h == Decimal("7.5")
    apply_fault_spec(sim, "stall@1")
    assert sim.pumps[1].prompt is Prompt.STALLED
    with pytest.raises(ScenarioError, match="unknown fault 'melt'"):
        apply_fault_spec(sim, "melt")
    with pytest.raises(ScenarioError, match="no simulated pump at address 7"):
        apply_fault_spec(sim, "garble@7")
    with pytest.raises(ScenarioError, match="'Nope' is not an error reply"):
        apply_fault_spec(sim, "reject=Nope")
    with pytest.raises(ScenarioError, match="garble takes no value"):
        apply_fault_spec(sim, "garble=3")
    with pytest.raises(ScenarioError, match="unknown command 'rat'"):
        apply_fault_spec(sim, "garble/rat")


def test_bad_scenario_file_is_refused_before_serving(tmp_path: Path) -> None:
    """A missing 'at_s', an unknown action or a bad fault names the file and the entry."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[events]]\naction = "stall"\n')
    with pytest.raises(ScenarioError, match=r"events\[0\]\.at_s: required field is missing"):
        load_scenario(bad)
    bad.write_text('name = "x"\n[[events]]\nat_s = 1\naction = "explode"\n')
    with pytest.raises(ScenarioError, match="'explode' is not one of"):
        load_scenario(bad)
    bad.write_text('name = "x"\n[[events]]\nat_s = 1\naction = "fault"\nfault = "melt"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: events\[0\]: unknown fault 'melt'"):
        check(PhdSimulator(), load_scenario(bad), str(bad))
    bad.write_text('name = "x"\n[[pumps]]\npump = 1\nreset_alarm = true\n')
    with pytest.raises(ScenarioError, match=r"pumps\[0\]\.reset_alarm: not a PHD ULTRA field"):
        setups(load_scenario(bad), str(bad))


def test_an_event_without_pump_acts_on_the_first_pump_of_the_chain() -> None:
    """On a chain at addresses 3 and 4, an event without ``pump`` stalls pump 3 only."""
    sim = PhdSimulator([PhdPumpSetup(address=3), PhdPumpSetup(address=4)])
    apply_fault_spec(sim, "stall")
    assert (sim.pumps[3].prompt, sim.pumps[4].prompt) == (Prompt.STALLED, Prompt.IDLE)
