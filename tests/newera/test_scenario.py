"""Scenario files and --faults specs drive the simulated pump as documented."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import WriteOutcome
from drivers.newera import NewEraPumpDriver
from drivers.newera.frames import Alarm, Status
from sim_devices.newera_pump import Fault
from sim_devices.newera_scenario import apply_event, apply_fault_spec, check, play, setups
from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator
from sim_devices.scenario import ScenarioError, load_scenario, load_scenario_text

STALL = Path(__file__).resolve().parents[2] / "sim_devices" / "scenarios" / "newera-stall.toml"


@pytest.mark.asyncio
async def test_shipped_stall_scenario_plays_on_the_accelerated_clock() -> None:
    """Stall at 120 s, keypad RUN at 180 s, keypad rate 6 mL/h at 240 s (simulated)."""
    scenario = load_scenario(STALL)
    sim = NewEraSimulator(setups(scenario, str(STALL)), speed=2400)
    check(sim, scenario, str(STALL))
    pump = sim.pumps[0]
    assert (pump.rate_ml_h, pump.status) == (9, Status.INFUSING)
    async with sim.serving("tcp://127.0.0.1:0"):
        player = asyncio.create_task(play(sim, scenario, str(STALL)), name="scenario")
        await sim.wait_until(lambda: pump.alarm is Alarm.STALLED, within_s=2)
        assert pump.status is Status.STOPPED
        await player
    assert (pump.rate_ml_h, pump.status) == (Decimal(6), Status.INFUSING)


def test_fault_specs_name_pump_value_and_problems() -> None:
    """NAME[=VALUE][@ADDRESS]; unknown names or pumps are refused with the spec named."""
    sim = NewEraSimulator([NewEraPumpSetup(address=0), NewEraPumpSetup(address=1)])
    apply_fault_spec(sim, "slow=1.5@1")
    assert sim.pumps[1].reply_delay_s == 1.5
    assert Fault.SLOW in sim.pumps[1].faults
    apply_fault_spec(sim, "stall")
    assert sim.pumps[0].alarm is Alarm.STALLED
    with pytest.raises(ScenarioError, match="unknown fault 'melt'"):
        apply_fault_spec(sim, "melt")
    with pytest.raises(ScenarioError, match="no simulated pump at address 7"):
        apply_fault_spec(sim, "garble@7")


def test_bad_scenario_file_is_refused_before_serving(tmp_path: Path) -> None:
    """An event without 'at_s', with an unknown action or naming a missing pump names the
    file and the entry."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[events]]\naction = "stall"\n')
    with pytest.raises(ScenarioError, match=r"events\[0\]\.at_s: required field is missing"):
        load_scenario(bad)
    bad.write_text('name = "x"\n[[events]]\nat_s = 1\naction = "explode"\n')
    with pytest.raises(ScenarioError, match="'explode' is not one of"):
        load_scenario(bad)
    bad.write_text('name = "x"\n[[events]]\nat_s = 1\naction = "stall"\npump = 4\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: events\[0\]: no simulated pump at addr"):
        check(NewEraSimulator(), load_scenario(bad), str(bad))


REFUSE = STALL.with_name("newera-refuse-but-apply.toml")


@pytest.mark.asyncio
async def test_shipped_refuse_but_apply_scenario_makes_rate_changes_applied() -> None:
    """The shipped scenario answers every rate change ?OOR yet applies it; the driver reports
    applied (the read-back shows the rate), and rate queries are left alone."""
    scenario = load_scenario(REFUSE)
    sim = NewEraSimulator(setups(scenario, str(REFUSE)), speed=10)
    check(sim, scenario, str(REFUSE))
    async with sim.serving("tcp://127.0.0.1:0"):
        await play(sim, scenario, str(REFUSE))
        driver = NewEraPumpDriver(sim.url, 0, timeout_s=0.25)
        await driver.connect()
        try:
            for rate in (Decimal(12), Decimal("7.5")):
                result = await driver.set_rate(rate)
                assert result.outcome is WriteOutcome.APPLIED
                assert "?OOR" in result.detail
                assert sim.pumps[0].rate_ml_h == rate
        finally:
            await driver.close()


def test_refusal_fault_specs_take_a_code_and_a_command() -> None:
    """NAME=CODE/COMMAND@ADDRESS arms a refusal for that command's writes on that pump; a code
    or command the pump does not have is refused, naming it."""
    sim = NewEraSimulator([NewEraPumpSetup(address=0), NewEraPumpSetup(address=1)])
    apply_fault_spec(sim, "refuse-but-apply=A?R/rat@1")
    pump = sim.pumps[1]
    assert (pump.reject_with, pump.fault_on) == ("A?R", {Fault.REFUSE_BUT_APPLY: "RAT"})
    assert pump.faults == {Fault.REFUSE_BUT_APPLY: None}
    apply_fault_spec(sim, "reject=?NA")
    assert (sim.pumps[0].reject_with, sim.pumps[0].fault_on) == ("?NA", {})
    with pytest.raises(ScenarioError, match=r"refuse-but-apply code '\?XYZ' is not one of"):
        apply_fault_spec(sim, "refuse-but-apply=?XYZ")
    with pytest.raises(ScenarioError, match="fault 'hang-up' on unknown command 'FOO'"):
        apply_fault_spec(sim, "hang-up/FOO")


def test_scenario_fault_events_are_checked_before_serving() -> None:
    """A fault event with an unknown refusal code or command is refused before serving."""
    head = 'name = "x"\n[[events]]\nat_s = 1\naction = "fault"\n'
    bad = load_scenario_text(head + 'fault = "reject"\nvalue = "A?Q"\n', "bad.toml")
    with pytest.raises(ScenarioError, match=r"events\[0\]\.value: reject code 'A\?Q'"):
        check(NewEraSimulator(), bad, "bad.toml")
    bad = load_scenario_text(head + 'fault = "garble"\non = "XYZ"\n', "bad.toml")
    with pytest.raises(ScenarioError, match=r"events\[0\]\.on: .* on unknown command 'XYZ'"):
        check(NewEraSimulator(), bad, "bad.toml")
    bad = load_scenario_text(head + 'fault = "garble"\nvalue = 3\n', "bad.toml")
    with pytest.raises(ScenarioError, match=r"events\[0\]\.value: garble takes no value"):
        check(NewEraSimulator(), bad, "bad.toml")


def test_clear_disarms_one_fault_or_every_fault() -> None:
    """``clear`` with a fault disarms that one; without, every armed fault."""
    sim = NewEraSimulator([NewEraPumpSetup(address=0)])
    for spec in ("garble", "noise/RAT"):
        apply_fault_spec(sim, spec)
    scenario = load_scenario_text(
        'name = "c"\n[[events]]\nat_s = 0\naction = "clear"\nfault = "noise"\n'
        '[[events]]\nat_s = 1\naction = "clear"\n',
        "c.toml",
    )
    (_, first), (_, second) = scenario.pump_events()
    apply_event(sim, first, "c.toml")
    assert (sim.pumps[0].faults, sim.pumps[0].fault_on) == ({Fault.GARBLE: None}, {})
    apply_event(sim, second, "c.toml")
    assert sim.pumps[0].faults == {}
