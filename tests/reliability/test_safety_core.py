"""The safety core against real processes: the gateway in-process on a real SQLite journal, real
Modbus and New Era simulators, a real mosquitto. Each test is one finding of a hostile tester
(the promise: what reaches a pump is what the library allowed, and what we report is true).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from daemon.base.results import KeptOutcome
from daemon.journal import AsyncJournal
from tests.reliability.harness import (
    GW,
    NE_RATE,
    NE_RATE_UP,
    VP_RATE,
    Probe,
    bedside,
    command,
    probe,
    pumps_online,
    running_gateway,
    simulators,
)
from tests.reliability.test_data_dir_errors import immutable
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.asyncio

NE_64 = {
    "drug": "norepinephrine",
    "concentration": {"value": 64, "unit": "ug/mL"},
    "diluent": "D5W",
    "route": "central",
    "profile": "adult-icu",
    "weight_kg": 70,
    "dose": {"value": 0.05, "unit": "ug/kg/min"},
}


def events(p: Probe, pump: str, kind: str) -> list[dict[str, Any]]:
    return [m.data for m in p.on(f"pump/{pump}/event") if m.data.get("type") == kind]


async def until(predicate: Callable[[], bool], *, what: str, timeout: float = 15.0) -> None:
    """For in-process state with no event to wait on: check it between loop turns."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def applied(p: Probe, pump: str, body: dict[str, Any]) -> dict[str, Any]:
    await p.send(pump, body)
    result: dict[str, Any] = await p.result(body["id"], "applied")
    return result


async def test_a_program_survives_a_restart_so_a_titration_after_it_delivers_the_dose_asked(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Stop, program norepinephrine 64 ug/mL, start; restart the daemon; titrate to 0.06
    ug/kg/min. The program comes from the journal, not the config (4 ug/mL): the pump is set
    to 3.94 mL/h (0.06 ug/kg/min at 64 ug/mL), never 63 mL/h (16x the dose), and the applied
    result reports the dose of the program the pump really runs."""
    data_dir = tmp_path / "data"
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            await applied(p, "pump-1", command("stop"))
            programmed = await applied(p, "pump-1", command("program", program=NE_64))
            # 0.05 ug/kg/min x 70 kg = 3.5 ug/min at 64 ug/mL = 3.28125 mL/h
            assert programmed["readback"]["rate"]["value"] == pytest.approx(3.28, abs=0.01)
            await applied(p, "pump-1", command("start"))
        async with running_gateway(cfg) as gateway:
            assert gateway.channels["pump-1"].program.concentration == Decimal(64)
            titrate = command("set_dose", dose={"value": 0.06, "unit": "ug/kg/min"})
            done = await applied(p, "pump-1", titrate)
        assert bench.rate("pump-1") == Decimal("3.94")
        assert done["readback"]["rate"]["value"] == pytest.approx(3.94)
        assert done["readback"]["dose"]["value"] == pytest.approx(0.06, rel=0.01)
        state = p.on("pump/pump-1/state")[-1].data
        assert state["concentration"] == {"value": 64.0, "unit": "ug/mL"}


async def test_a_command_to_a_pump_that_stops_answering_ends_uncertain_not_silent(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The pump goes silent between the check and the write: the client sees ``accepted``
    and then an end (``uncertain`` or ``failed``), never nothing; the daemon keeps running."""
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway:
            bench.modbus.inject("no_answer", unit=1)
            cmd = command()
            await p.send("pump-1", cmd)
            await p.result(cmd["id"], "accepted")
            end = await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-1/command/result")
                    and m.data.get("id") == cmd["id"]
                    and m.data.get("phase") in ("uncertain", "failed")
                )
            )
            assert end.data["error"]["code"] in ("device_timeout", "device_rejected", "not_sent")
            assert not gateway.gate._writing, "the pump stays held after its command ended"
            bench.modbus.clear("no_answer", unit=1)
            again = command(cid=None)
            await p.send("pump-1", again)
            # served again: the uncertain write may or may not have landed, both are fine
            final = await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-1/command/result")
                    and m.data.get("id") == again["id"]
                    and m.data.get("phase") in ("applied", "rejected")
                ),
                timeout=30,
            )
            assert final.data["phase"] == "applied" or final.data["error"]["code"] == "busy"


async def test_a_never_written_command_is_not_reconciled_applied_when_the_pump_was_already_there(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A crash left a command at ``accepted`` whose target is the rate the pump already had
    before it (recorded with ``accepted``): after the restart it is ``failed`` (interrupted,
    no change made by it), never ``applied``; nothing is written."""
    data_dir = tmp_path / "data"
    cmd = command(rate={"value": float(NE_RATE), "unit": "mL/h"})
    journal = await AsyncJournal.open(data_dir, gateway_id=GW)
    await journal.claim_command(cmd["id"], pump_id="pump-1", command=cmd)
    verdict = {"verdict": "accept", "rate": {"value": float(NE_RATE), "unit": "mL/h"}}
    outcome = {
        "phase": "accepted",
        "verdict": verdict,
        "pump": "pump-1",
        "before": {"status": "infusing", "rate": float(NE_RATE)},
    }
    await journal.set_command_outcome(cmd["id"], KeptOutcome.from_json(outcome), pump_id="pump-1")
    await journal.aclose()
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            done = await p.wait_for(
                lambda m: m.topic.endswith("pump-1/command/result") and m.data["id"] == cmd["id"]
            )
            assert done.data["phase"] == "failed"
            assert done.data["reconciled"] is True
            assert done.data["error"]["code"] == "interrupted"
        assert bench.modbus.pump(1).writes == 0


async def test_a_front_panel_change_during_a_journal_fault_is_reported_once_it_is_writable(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The journal cannot be written (read-only files) while the pump's front panel sets
    vasopressin to 50 mL/h (above HARD_MAX). The state keeps showing the last journaled truth;
    once the journal is writable again the change is journaled and published: ``rate_changed``
    (source device) and ``out_of_library_observed`` with HARD_MAX."""
    data = tmp_path / "data"
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data)
        async with running_gateway(cfg) as gateway:
            channel = gateway.channels["pump-2"]
            files = [data / "journal.sqlite3", data / "journal.sqlite3-wal"]
            try:
                with contextlib.ExitStack() as stack:
                    for f in files:
                        stack.enter_context(immutable(f))
                    bench.newera.pumps[0].front_panel_rate(Decimal(50))
                    await until(lambda: channel.journal_behind, what="a poll that cannot journal")
                    assert channel.status is not None
                    assert channel.status.rate_ml_h == VP_RATE
            except subprocess.CalledProcessError:
                pytest.skip("this filesystem does not support chattr +i")
            changed = await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-2/event")
                    and m.data.get("type") == "rate_changed"
                    and m.data["to"]["rate"]["value"] == 50.0
                )
            )
            assert changed.data["source"] == "device"
            observed = await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-2/event")
                    and m.data.get("type") == "out_of_library_observed"
                )
            )
            rules = {f["rule"] for f in observed.data["verdict"]["findings"]}
            assert "HARD_MAX" in rules
            assert not channel.journal_behind


async def test_a_front_panel_drop_below_the_soft_minimum_is_reported_out_of_library(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A change seen at the pump is judged by every rule: a drop of norepinephrine from 0.05
    to 0.005 ug/kg/min (soft minimum 0.01, a 90 % drop) raises ``out_of_library_observed``
    with its confirm-level findings, not only a hard breach."""
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg):
            bench.modbus.inject("front_panel_rate", 5.25, unit=1)  # 0.005 ug/kg/min
            observed = await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-1/event")
                    and m.data.get("type") == "out_of_library_observed"
                )
            )
            findings = observed.data["verdict"]["findings"]
            assert "SOFT_MIN" in {f["rule"] for f in findings}
            assert {f["severity"] for f in findings} <= {"confirm", "reject"}
            assert observed.data["from"]["rate"]["value"] == float(NE_RATE)


async def test_a_reused_id_with_another_payload_or_pump_is_an_id_conflict(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Ids are unique per gateway: the same id and payload is ``duplicate`` naming the pump it
    ran on; the same id with another dose, or sent to another pump, is ``rejected`` with
    ``id_conflict`` naming the first pump and phase; neither reaches a pump."""
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg):
            first = command()
            await applied(p, "pump-1", first)
            writes = bench.modbus.pump(1).writes
            await p.send("pump-1", first)
            dup = await p.result(first["id"], "duplicate")
            assert dup["first"]["pump"] == "pump-1"
            assert dup["first"]["phase"] == "applied"
            other_dose = {**first, "rate": {"value": 70.0, "unit": "mL/h"}}
            await p.send("pump-1", other_dose)
            conflict = await p.result(first["id"], "rejected")
            assert conflict["error"]["code"] == "id_conflict"
            assert "pump-1" in conflict["error"]["message"]
            assert "applied" in conflict["error"]["message"]
            n = len(p.messages)
            await p.send("pump-2", first)
            other_pump = await p.result(first["id"], "rejected", after=n)
            assert other_pump["error"]["code"] == "id_conflict"
            assert bench.modbus.pump(1).writes == writes
            assert bench.rate("pump-1") == NE_RATE_UP
            assert bench.rate("pump-2") == VP_RATE


async def test_a_rejected_command_does_not_hold_the_pump(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A command sent right after one the library rejects is served, not answered ``busy``:
    only a write in progress holds a pump."""
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg):
            too_much = command("set_dose", dose={"value": 5, "unit": "ug/kg/min"})
            fine = command()
            await p.send("pump-1", too_much)
            await p.send("pump-1", fine)
            rejected = await p.result(too_much["id"], "rejected")
            assert "HARD_MAX" in {f["rule"] for f in rejected["verdict"]["findings"]}
            await p.result(fine["id"], "applied")
            assert bench.rate("pump-1") == NE_RATE_UP


async def test_the_dose_history_survives_a_restart_for_the_time_window_rules(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A titration, a restart, another titration at once: the second is judged against the
    first (journaled dose history), so TITRATION_INTERVAL still flags it."""
    data_dir = tmp_path / "data"
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            await applied(p, "pump-1", command())
        async with running_gateway(cfg) as gateway:
            assert [float(h.dose) for h in gateway.channels["pump-1"].history][-1] == 0.06
            again = command("set_dose", dose={"value": 0.07, "unit": "ug/kg/min"})
            await p.send("pump-1", again)
            accepted = await p.result(again["id"], "accepted")
            rules = {f["rule"] for f in accepted["verdict"]["findings"]}
            assert "TITRATION_INTERVAL" in rules


async def test_a_front_panel_change_between_the_check_and_the_write_stops_the_write(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The check judges a titration from the state the last poll showed. When the pump was
    changed at its front panel since (52.5 -> 60 mL/h, not polled yet), the write's pre-read
    shows it: nothing is written, the command ends ``failed`` (``not_sent``) saying the pump
    changed since the check, and the pump keeps the rate the nurse set."""
    async with simulators() as bench, probe(mosquitto.url) as p:
        # one poll at start, the next an hour later: the change is seen by the pre-read only
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        for pump in cfg["pumps"]:
            pump["poll_period_s"] = 3600
        async with running_gateway(cfg):
            await pumps_online(p, pumps=("pump-1",))
            bench.modbus.inject("front_panel_rate", 60.0, unit=1)
            writes = bench.modbus.pump(1).writes
            body = command()
            await p.send("pump-1", body)
            result = await p.result(body["id"], "failed")
            assert result["error"]["code"] == "not_sent"
            assert "changed since the command was checked" in result["error"]["message"]
            assert "52.5 mL/h" in result["error"]["message"]
            assert "60 mL/h" in result["error"]["message"]
            assert bench.modbus.pump(1).writes == writes
            assert bench.rate("pump-1") == Decimal(60)
