"""PHD scenario files and --faults specs drive the simulated chain as documented."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.phd.grammar import Prompt
from sim_devices.phd_pump import Fault
from sim_devices.phd_scenario import (
    FaultSpecError,
    apply_fault_spec,
    check_events,
    load_scenario,
    play,
)
from sim_devices.phd_server import PhdSimulator, PumpSetup

STALL = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios" / "phd-stall.toml"


@pytest.mark.asyncio
async def test_shipped_stall_scenario_plays_on_the_accelerated_clock() -> None:
    """Stall at 120 s, touch-screen run at 180 s, rate 40 mL/h at 240 s, refusals from 300 s."""
    pumps, events = load_scenario(STALL)
    sim = PhdSimulator(pumps, speed=2400)
    check_events(sim, events, str(STALL))
    pump = sim.pumps[1]
    assert (pump.rate_ml_h, pump.prompt) == (Decimal("52.5"), Prompt.INFUSING)
    async with sim.serving("tcp://127.0.0.1:0"):
        player = asyncio.create_task(play(sim, events, str(STALL)), name="scenario")
        await sim.wait_until(lambda: pump.prompt is Prompt.STALLED, within_s=2)
        await player
    assert (pump.rate_ml_h, pump.prompt) == (Decimal(40), Prompt.INFUSING)
    assert sim.pumps[2].fault_on == {Fault.REFUSE_BUT_APPLY: "irate"}
    assert sim.pumps[2].reject_with == "Out of range"


def test_fault_specs_name_pump_value_and_problems() -> None:
    """NAME[=VALUE][/COMMAND][@ADDRESS]; unknown names, values or pumps name the spec."""
    sim = PhdSimulator([PumpSetup(address=0), PumpSetup(address=1)])
    apply_fault_spec(sim, "slow=1.5@1")
    assert sim.pumps[1].reply_delay_s == 1.5
    apply_fault_spec(sim, "panel-rate=7.5")
    assert sim.pumps[0].rate_ml_h == Decimal("7.5")
    apply_fault_spec(sim, "stall@1")
    assert sim.pumps[1].prompt is Prompt.STALLED
    with pytest.raises(FaultSpecError, match="unknown fault 'melt'"):
        apply_fault_spec(sim, "melt")
    with pytest.raises(FaultSpecError, match="no simulated pump at address 7"):
        apply_fault_spec(sim, "garble@7")
    with pytest.raises(FaultSpecError, match="'Nope' is not an error reply"):
        apply_fault_spec(sim, "reject=Nope")
    with pytest.raises(FaultSpecError, match="garble takes no value"):
        apply_fault_spec(sim, "garble=3")
    with pytest.raises(FaultSpecError, match="unknown command 'rat'"):
        apply_fault_spec(sim, "garble/rat")


def test_bad_scenario_file_is_refused_before_serving(tmp_path: Path) -> None:
    """A missing 'at_s', an unknown action or a bad fault names the entry."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[events]]\naction = "stall"\n')
    with pytest.raises(FaultSpecError, match=r"events\[0\]: needs 'at_s'"):
        load_scenario(bad)
    bad.write_text('[[events]]\nat_s = 1\naction = "explode"\n')
    with pytest.raises(FaultSpecError, match="unknown action 'explode'"):
        load_scenario(bad)
    bad.write_text('[[events]]\nat_s = 1\naction = "fault"\nfault = "melt"\n')
    _, events = load_scenario(bad)
    with pytest.raises(FaultSpecError, match="unknown fault 'melt'"):
        check_events(PhdSimulator(), events, str(bad))
