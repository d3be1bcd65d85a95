"""The daemon SIGKILLed in the middle of a verified write, then restarted on the same data dir.

The Modbus simulator answers slowly, so the write sequence (write, then confirming reads) is
in flight when the process dies: the device has taken the new rate but the daemon never saw
the read-back. Guarantees: the broker announces ``offline`` (last will) at once; the journal
verifies; ``session`` is unchanged and ``seq`` continues; the interrupted command is
reconciled from the device after restart and reported on its result topic (never executed
again: a resend of its id is answered ``duplicate``, and the simulator sees no new write).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from daemon.base.paths import journal_path
from daemon.base.results import KeptOutcome
from daemon.journal import AsyncJournal, Journal, JournalKind
from tests.reliability.harness import (
    GW,
    NE_RATE,
    NE_RATE_UP,
    REPO,
    Message,
    bedside,
    command,
    daemon_process,
    probe,
    pumps_online,
    running_gateway,
    simulators,
    write_toml,
)
from tests.support.procs import Mosquitto

SCHEMAS = REPO / "docs" / "schemas"
SLOW_S = 0.6  # below the driver's 1 s timeout: slow but answered


def result_schema() -> jsonschema.Draft202012Validator:
    path = SCHEMAS / "infusiond.pump.command.result-1.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


def journal_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "journal", "verify", "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def journal_facts(data_dir: Path) -> tuple[str, int, dict[str, str | None]]:
    """(session, last event seq, command id -> recorded phase)."""
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        seqs = [r.payload["seq"] for r in journal.rows(kinds=[JournalKind.EVENT])]
        phases: dict[str, str | None] = {}
        for row in journal.rows(kinds=[JournalKind.COMMAND]):
            if "outcome" in row.payload:
                phases[row.payload["id"]] = row.payload["outcome"]["phase"]
        return journal.session, max(seqs, default=0), phases
    finally:
        journal.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_sigkill_mid_command_then_restart_reconciles_and_never_re_executes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        config = write_toml(tmp_path / "infusiond.toml", cfg)
        async with probe(mosquitto.url) as p:
            with daemon_process(config, tmp_path / "run1.log") as first:
                await pumps_online(p)
                info = await p.wait_for(lambda m: m.topic.endswith("bridge/info"))
                session = info.json["session"]
                bench.modbus.inject("slow_answer", SLOW_S, unit=1)
                cmd = command()
                await p.send("pump-1", cmd)
                await p.result(cmd["id"], "accepted")
                # wait for the device to take the rate: the confirming reads are now in flight
                deadline = time.monotonic() + 15
                while bench.rate("pump-1") != NE_RATE_UP:
                    assert time.monotonic() < deadline, "the write never reached the pump"
                    await asyncio.sleep(0.01)
                mark = len(p.messages)
                first.kill()
            will = await p.wait_for(lambda m: m.topic.endswith("bridge/state"), after=mark)
            assert will.json == {"state": "offline"}
            bench.modbus.clear("slow_answer", unit=1)

            verified = journal_verify(data_dir)
            assert verified.returncode == 0, verified.stderr
            same_session, last_seq, phases = journal_facts(data_dir)
            assert same_session == session
            assert phases[cmd["id"]] == "accepted"  # killed before the read-back
            writes = bench.modbus.pump(1).writes

            mark = len(p.messages)
            with daemon_process(config, tmp_path / "run2.log"):
                await pumps_online(p, after=mark)
                info = await p.wait_for(lambda m: m.topic.endswith("bridge/info"), after=mark)
                assert info.json["session"] == session
                # the interrupted command is reconciled from the device and reported
                done = await p.result(cmd["id"], "applied", after=mark)
                assert done["reconciled"] is True
                envelope = next(
                    m.json
                    for m in p.messages[mark:]
                    if m.topic.endswith("command/result") and m.data.get("reconciled")
                )
                assert not list(result_schema().iter_errors(envelope))
                assert done["readback"]["rate"]["value"] == float(NE_RATE_UP)
                state = await p.wait_for(
                    lambda m: (
                        m.topic.endswith("pump/pump-1/state") and m.data["connection"] == "online"
                    ),
                    after=mark,
                )
                assert state.data["rate"]["value"] == float(NE_RATE_UP)
                # the change it made is reported once, by its id, though it crossed the restart
                crossed = await p.wait_for(
                    lambda m: (
                        m.topic.endswith("pump/pump-1/event")
                        and m.data["type"] == "rate_changed"
                        and m.data.get("command_id") == cmd["id"]
                    ),
                    after=mark,
                )
                assert crossed.data["while_disconnected"] is True
                assert crossed.data["to"]["rate"]["value"] == float(NE_RATE_UP)
                # resending it executes nothing
                await p.send("pump-1", cmd)
                dup = await p.result(cmd["id"], "duplicate", after=mark)
                assert dup["first"]["phase"] == "applied"
                # seq continues: a new event after the restart gets the next numbers
                bench.modbus.inject("front_panel_rate", 52.5, unit=1)
                ev = await p.wait_for(
                    lambda m: (
                        m.topic.endswith("pump/pump-1/event")
                        and m.data["type"] == "rate_changed"
                        and m.data.get("source") == "device"
                    ),
                    after=mark,
                )
                assert ev.json["seq"] > last_seq
                assert ev.json["session"] == session
                assert bench.modbus.pump(1).writes == writes
            assert journal_verify(data_dir).returncode == 0


@pytest.mark.asyncio
async def test_an_interrupted_command_the_device_did_not_take_is_reported_failed_not_redone(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A journal left with a command at ``accepted`` (as after a crash before the write reached
    the pump) and a device still at the old rate: after start the command is answered
    ``failed`` with error ``interrupted`` and the device's read-back, and nothing is written."""
    data_dir = tmp_path / "data"
    cmd = command()
    journal = await AsyncJournal.open(data_dir, gateway_id=GW)
    await journal.claim_command(cmd["id"], pump_id="pump-1", command=cmd)
    verdict = {"verdict": "accept", "rate": {"value": float(NE_RATE_UP), "unit": "mL/h"}}
    await journal.set_command_outcome(
        cmd["id"],
        KeptOutcome.from_json({"phase": "accepted", "verdict": verdict}),
        pump_id="pump-1",
    )
    await journal.aclose()
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            done = await p.result(cmd["id"], "failed")
            assert done["reconciled"] is True
            assert done["error"]["code"] == "interrupted"
            assert done["readback"]["rate"]["value"] == float(NE_RATE)
            await p.send("pump-1", cmd)
            assert (await p.result(cmd["id"], "duplicate"))["first"]["phase"] == "failed"
        assert bench.modbus.pump(1).writes == 0
        assert bench.rate("pump-1") == NE_RATE


@pytest.mark.asyncio
async def test_an_interrupted_command_on_a_pump_that_cannot_be_read_is_reported_uncertain(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """After a restart the pump does not answer: the interrupted command cannot be settled
    from the device, so it is reported ``uncertain`` (code ``interrupted``), not retried."""
    data_dir = tmp_path / "data"
    cmd = command()
    journal = await AsyncJournal.open(data_dir, gateway_id=GW)
    await journal.claim_command(cmd["id"], pump_id="pump-1", command=cmd)
    verdict = {"verdict": "accept", "rate": {"value": float(NE_RATE_UP), "unit": "mL/h"}}
    await journal.set_command_outcome(
        cmd["id"],
        KeptOutcome.from_json({"phase": "accepted", "verdict": verdict}),
        pump_id="pump-1",
    )
    await journal.aclose()
    async with simulators() as bench, probe(mosquitto.url) as p:
        bench.modbus.inject("no_answer", unit=1)
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            done = await p.result(cmd["id"], "uncertain")
            assert done["reconciled"] is True
            assert done["error"]["code"] == "interrupted"
        assert bench.modbus.pump(1).writes == 0


def _result_of(cid: str) -> Callable[[Message], bool]:
    return lambda m: m.topic.endswith("/command/result") and m.data.get("id") == cid


@pytest.mark.asyncio
async def test_a_command_claimed_but_never_checked_is_settled_rejected_at_start(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A journal left with a command id claimed and no outcome (the daemon stopped between the
    claim and the verdict): nothing of it reached the pump. At start it is settled ``rejected``
    (``internal_error``), journaled and published (a sender waiting on the id hears it), so a
    resend of the id is a schema-valid ``duplicate`` whose ``first`` says so; nothing is
    written to the pump."""
    data_dir = tmp_path / "data"
    cmd = command()
    journal = await AsyncJournal.open(data_dir, gateway_id=GW)
    await journal.claim_command(cmd["id"], pump_id="pump-1", command=cmd)
    await journal.aclose()
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data_dir)
        async with running_gateway(cfg):
            announced = await p.wait_for(_result_of(cmd["id"]))
            result_schema().validate(announced.json)
            assert announced.data["phase"] == "rejected"
            assert announced.data["error"]["code"] == "internal_error"
            mark = len(p.messages)
            await p.send("pump-1", cmd)
            msg = await p.wait_for(_result_of(cmd["id"]), after=mark)
            result_schema().validate(msg.json)
            assert msg.data["phase"] == "duplicate"
            first = msg.data["first"]
            assert first["phase"] == "rejected"
            assert first["error"]["code"] == "internal_error"
            assert "not executed" in first["error"]["message"]
            assert first["pump"] == "pump-1"
        assert bench.modbus.pump(1).writes == 0
    assert journal_facts(data_dir)[2][cmd["id"]] == "rejected"
    assert journal_verify(data_dir).returncode == 0


@pytest.mark.asyncio
async def test_a_repeat_of_an_id_with_no_outcome_yet_is_refused_never_told_an_empty_first(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """While the first command of an id has no outcome recorded (claimed, still being checked),
    a repeat cannot be told one: it is ``rejected`` with ``busy`` on the same pump and
    ``id_conflict`` on another, both schema-valid, and nothing is written."""
    cmd = command()
    async with simulators() as bench, probe(mosquitto.url) as p:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway:
            # the state of an id whose first command is being checked: claimed, no outcome
            await gateway.journal.claim_command(cmd["id"], pump_id="pump-1", command=cmd)
            mark = len(p.messages)
            await p.send("pump-1", cmd)
            same = await p.wait_for(_result_of(cmd["id"]), after=mark)
            mark = len(p.messages)
            await p.send("pump-2", cmd)
            other = await p.wait_for(_result_of(cmd["id"]), after=mark)
        for msg in (same, other):
            result_schema().validate(msg.json)
            assert msg.data["phase"] == "rejected"
            assert "first" not in msg.data
        assert same.data["error"]["code"] == "busy"
        assert other.data["error"]["code"] == "id_conflict"
        assert bench.modbus.pump(1).writes == 0
        assert bench.rate("pump-1") == NE_RATE
