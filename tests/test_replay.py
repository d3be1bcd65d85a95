"""`infusiond journal replay` publishes a recorded session's events, in order, at its pace."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import jsonschema
import pytest

from daemon.journal import Journal
from tests.support.events import rate_changed
from tests.support.procs import Mosquitto

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parent.parent / "docs/schemas/infusiond.pump.event-1.json"
    ).read_text()
)
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def record_session(data_dir: Path) -> str:
    journal = Journal.open(data_dir, gateway_id="bed-7")
    try:
        with journal.transaction():
            for i, (pump, rate) in enumerate((("pump-1", 52.5), ("pump-2", 9.0), ("pump-1", 63.0))):
                journal.record_event(
                    pump, rate_changed(1.0, rate), ts=T0 + timedelta(seconds=30 * i)
                )
        return journal.session
    finally:
        journal.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("source", ["data-dir", "export-file"])
async def test_replay_publishes_every_event_in_seq_order_as_a_replay_session(
    tmp_path: Path, mosquitto: Mosquitto, source: str
) -> None:
    """Both a journal and its export replay: same seq, data and ts; session replay-<recorded>."""
    data_dir = tmp_path / "data"
    session = record_session(data_dir)
    where = ["--data-dir", str(data_dir)]
    expected_session = f"replay-{session}"
    if source == "export-file":
        export = cli("journal", "export", "--data-dir", str(data_dir))
        assert export.returncode == 0, export.stderr
        (tmp_path / "rec.jsonl").write_text(export.stdout)
        where = ["--from", str(tmp_path / "rec.jsonl")]
        expected_session = "replay-file"
    got: list[dict[str, object]] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as sub:
        await sub.subscribe("infusiond/lab/pump/+/event", qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon.cli",
            "journal",
            "replay",
            *where,
            "--broker",
            mosquitto.url,
            "--gateway",
            "lab",
            "--speed",
            "600",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            async for m in sub.messages:
                got.append(json.loads(m.payload))  # type: ignore[arg-type]
                if len(got) == 3:
                    break
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "replayed 3 events"
    for payload in got:
        jsonschema.validate(payload, SCHEMA)
    assert [p["seq"] for p in got] == [1, 2, 3]
    assert {p["session"] for p in got} == {expected_session}
    assert got[2]["ts"] == "2026-11-26T12:01:00.000Z"
    assert got[1]["data"]["pump_id"] == "pump-2"  # type: ignore[index]


def test_replay_errors_name_the_problem(tmp_path: Path) -> None:
    """A bad export line, a bad broker URL and a missing journal are clear errors (exit 1)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "event"}\nnot json\n')
    proc = cli("journal", "replay", "--from", str(bad), "--broker", "mqtt://127.0.0.1:1")
    assert proc.returncode == 1
    assert f"{bad}:2: not a journal row" in proc.stderr
    proc = cli("journal", "replay", "--from", str(bad), "--broker", "http://x")
    assert proc.returncode == 1
    assert "--broker must be mqtt://HOST:PORT" in proc.stderr
    proc = cli("journal", "replay", "--data-dir", str(tmp_path / "none"))
    assert proc.returncode == 1
    assert "no journal at" in proc.stderr
