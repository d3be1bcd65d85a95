"""The journal: hash chain, tamper detection, session/seq persistence, dedupe, outbox."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.base.paths import DataDirError, journal_path
from daemon.base.results import PENDING, KeptOutcome
from daemon.base.topics import Topics
from daemon.cli import main
from daemon.journal import (
    GENESIS_HASH,
    AsyncJournal,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalKind,
    row_hash,
)
from daemon.mqtt.event_messages import outbox_message
from tests.support.events import alarm_raised, rate_changed, started, tagged

T0 = datetime(2026, 11, 26, 17, 18, 0, 123000, tzinfo=UTC)


async def _fill(journal: AsyncJournal, n: int) -> None:
    for i in range(n):
        await journal.append(JournalKind.VERDICT, {"i": i}, pump_id="pump-1", ts=T0)


def _tamper(data_dir: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(journal_path(data_dir)) as conn:
        conn.execute(sql, params)


@pytest.mark.asyncio
async def test_chain_links_every_row_and_verifies(tmp_path: Path) -> None:
    """Each row's hash is sha256(prev_hash + canonical row); an untouched journal verifies."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 5)
        await journal.record_event("pump-1", rate_changed(1, 2), ts=T0)
        report = await journal.verify()
        rows = await journal.rows()
    assert report.ok
    assert report.rows == 6
    assert rows[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    last = rows[-1]
    assert last.hash == row_hash(
        last.prev_hash,
        last.n,
        last.ts,
        last.kind,
        last.pump_id,
        payload_text=json.dumps(last.payload, separators=(",", ":"), sort_keys=True),
    )
    assert last.ts == "2026-11-26T17:18:00.123Z"


@pytest.mark.parametrize(
    ("sql", "params", "bad_row", "reason"),
    [
        ("UPDATE journal SET payload=? WHERE n=3", ('{"i":99}',), 3, "hash does not match"),
        ("UPDATE journal SET kind='alarm' WHERE n=4", (), 4, "hash does not match"),
        ("DELETE FROM journal WHERE n=2", (), 2, "row 2 is missing"),
        ("UPDATE journal SET prev_hash=? WHERE n=5", ("0" * 64,), 5, "prev_hash"),
        ("DELETE FROM journal WHERE n=6", (), 6, "rows removed at the end"),
    ],
)
@pytest.mark.asyncio
async def test_tampering_is_detected_and_names_the_first_broken_row(
    tmp_path: Path, sql: str, params: tuple[object, ...], bad_row: int, reason: str
) -> None:
    """Editing, deleting or relinking any row makes verify fail at exactly that row."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 6)
    _tamper(tmp_path, sql, *params)
    ro = Journal.open_readonly(journal_path(tmp_path))
    try:
        report = ro.verify()
    finally:
        ro.close()
    assert not report.ok
    assert report.first_bad == bad_row
    assert report.reason is not None
    assert reason in report.reason
    with pytest.raises(JournalCorrupt, match=f"row {bad_row}"):
        report.raise_if_broken()


@pytest.mark.asyncio
async def test_verify_cli_exits_1_naming_the_row_and_0_when_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`infusiond journal verify --data-dir` exits 0 on a good chain, 1 naming the broken row."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 4)
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 0
    assert "ok, 4 rows" in capsys.readouterr().out
    _tamper(tmp_path, "UPDATE journal SET ts='2020-01-01T00:00:00.000Z' WHERE n=2")
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 1
    assert "broken at row 2" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_export_prints_every_row_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`journal export` prints one JSON object per row, in order, with hashes."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 3)
    assert main(["journal", "export", "--data-dir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["n"] for row in lines] == [1, 2, 3]
    assert lines[2]["payload"] == {"i": 2}
    assert set(lines[0]) == {"n", "ts", "kind", "pump_id", "payload", "prev_hash", "hash"}


def test_verify_cli_without_journal_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No journal in the data dir: exit 1 with a message naming the path, no traceback."""
    assert main(["journal", "verify", "--data-dir", str(tmp_path / "none")]) == 1
    assert "no journal at" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_readonly_reader_sees_a_consistent_chain_while_the_daemon_writes(
    tmp_path: Path,
) -> None:
    """WAL: a read-only verify during a burst of writes never sees a broken chain."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 1)
        writer = asyncio.create_task(_fill(journal, 300), name="burst")
        reports = []
        while not writer.done():
            ro = Journal.open_readonly(journal_path(tmp_path))
            try:
                reports.append(await asyncio.to_thread(ro.verify))
            finally:
                ro.close()
        await writer
    assert reports
    assert [r for r in reports if not r.ok] == []
    assert reports[0].rows >= 1


@pytest.mark.asyncio
async def test_seq_and_session_persist_across_reopen(tmp_path: Path) -> None:
    """seq keeps counting after a restart (never reused) and the session stays the same."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        assert journal.created_anew
        session = journal.session
        seqs = [(await journal.record_event("p", started())).seq for _ in range(3)]
        assert journal.seq == 3
    assert seqs == [1, 2, 3]
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        assert not journal.created_anew
        assert journal.session == session
        assert journal.seq == 3
        assert (await journal.record_event("q", started())).seq == 4


@pytest.mark.asyncio
async def test_session_is_new_when_the_journal_is_recreated(tmp_path: Path) -> None:
    """Deleting the journal file gives a new session and restarts seq at 1."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        old = journal.session
        await journal.record_event("p", started())
    for suffix in ("", "-wal", "-shm"):
        Path(str(journal_path(tmp_path)) + suffix).unlink(missing_ok=True)
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        assert journal.created_anew
        assert journal.session != old
        assert (await journal.record_event("p", started())).seq == 1


@pytest.mark.asyncio
async def test_event_envelope_in_outbox_carries_seq_session_and_topic(tmp_path: Path) -> None:
    """The outbox holds the exact bytes to publish: the pump.event envelope on the event topic."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        event = alarm_raised("occlusion", T0)
        item = await journal.record_event("pump-1", event, ts=T0)
        [pending] = await journal.outbox_pending()
        assert pending == item
        topic, payload = outbox_message(pending, topics=Topics("gw"), session=journal.session)
        body = json.loads(payload)
        assert topic == "infusiond/gw/pump/pump-1/event"
        assert body == {
            "schema": "infusiond.pump.event/1",
            "gateway": "gw",
            "session": journal.session,
            "seq": 1,
            "ts": "2026-11-26T17:18:00.123Z",
            "data": event.journaled("pump-1"),
        }


@pytest.mark.asyncio
async def test_outbox_replays_pending_in_seq_order_and_forgets_acked(tmp_path: Path) -> None:
    """Unacked events survive a restart and come back oldest first; acked ones are gone."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await asyncio.gather(*(journal.record_event(f"p{i % 3}", tagged(i)) for i in range(20)))
        assert await journal.outbox_ack([1, 2, 5]) == 3
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        pending = await journal.outbox_pending()
        assert [p.seq for p in pending] == [s for s in range(1, 21) if s not in (1, 2, 5)]
        session = journal.session
        messages = [outbox_message(p, topics=Topics("gw"), session=session) for p in pending]
        assert [json.loads(payload)["seq"] for _, payload in messages] == [p.seq for p in pending]
        assert [p.seq for p in await journal.outbox_pending(limit=2)] == [3, 4]


@pytest.mark.asyncio
async def test_command_ids_are_deduplicated_across_restarts(tmp_path: Path) -> None:
    """A repeated id is not claimed again and reports the first outcome, after a restart too."""
    outcome = KeptOutcome.from_json(
        {"phase": "rejected", "error": {"code": "expired", "message": "too late"}}
    )
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        claim = await journal.claim_command("c-1", pump_id="pump-1", command={"id": "c-1"})
        assert claim.is_new
        in_progress = await journal.claim_command("c-1", pump_id="pump-1", command={"id": "c-1"})
        assert not in_progress.is_new
        assert in_progress.first == PENDING
        await journal.set_command_outcome("c-1", outcome, pump_id="pump-1")
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        again = await journal.claim_command("c-1", pump_id="pump-1", command={"id": "c-1"})
        assert again.first == outcome
        assert (await journal.claim_command("c-2", pump_id="pump-1", command={})).is_new
        commands = await journal.rows(kinds=[JournalKind.COMMAND])
        assert [r.payload.get("duplicate") for r in commands] == [False, True, None, True, False]
        assert (await journal.verify()).ok


@pytest.mark.asyncio
async def test_a_failing_job_does_not_undo_the_others_in_its_batch(tmp_path: Path) -> None:
    """Group commit: a bad payload fails its caller only; concurrent writes still commit."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        results = await asyncio.gather(
            journal.append(JournalKind.STATE, {"ok": 1}),
            journal.append(JournalKind.STATE, {"bad": float("nan")}),
            journal.append(JournalKind.STATE, {"ok": 2}),
            return_exceptions=True,
        )
        assert isinstance(results[1], ValueError)
        assert [r.payload for r in await journal.rows()] == [{"ok": 1}, {"ok": 2}]
        assert (await journal.verify()).ok


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        (Path("/proc/self"), "is not writable"),  # exists, unwritable even for root
        (Path("/proc/self/infusiond"), "cannot create data dir"),
    ],
)
@pytest.mark.asyncio
async def test_unwritable_data_dir_is_a_clear_error(data_dir: Path, message: str) -> None:
    """An unwritable data dir raises DataDirError naming it, not a sqlite traceback."""
    with pytest.raises(DataDirError, match=message) as exc:
        await AsyncJournal.open(data_dir, gateway_id="gw")
    assert str(data_dir) in str(exc.value)


def test_unwritable_data_dir_fails_the_cli_cleanly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`journal verify` on a data dir without a journal exits 1 with one line, no traceback."""
    assert main(["journal", "export", "--data-dir", "/proc/self"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("infusiond: error: no journal at /proc/self/journal.sqlite3")


@pytest.mark.asyncio
async def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """A data dir path that is a regular file is reported as such."""
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        await AsyncJournal.open(not_dir, gateway_id="gw")


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    """Garbage in place of the journal file gives JournalError naming the file."""
    journal_path(tmp_path).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match=r"journal\.sqlite3"):
        await AsyncJournal.open(tmp_path, gateway_id="gw")


def test_sync_writes_outside_a_transaction_are_refused(tmp_path: Path) -> None:
    """The sync core refuses a write outside transaction() (it would not be atomic)."""
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        with pytest.raises(JournalError, match=r"inside Journal\.transaction"):
            journal.record_event("p", started(), ts=T0)
        with journal.transaction():
            journal.record_event("p", started(), ts=T0)
        assert journal.current_seq() == 1
    finally:
        journal.close()


def test_power_cut_during_a_burst_loses_at_most_the_unacknowledged_tail(tmp_path: Path) -> None:
    """SIGKILL mid-burst: the journal reopens, verifies, and holds every acknowledged event."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.journal_writer_child", str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:  # each line: the highest seq whose commit returned
            acked = int(line)
            if acked >= 2000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert acked >= 2000, "child died before the burst"
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        assert journal.verify().ok
        assert journal.current_seq() >= acked
        pending = journal.outbox_pending(limit=100_000)
        assert [p.seq for p in pending] == list(range(1, journal.current_seq() + 1))
        events = list(journal.rows(kinds=[JournalKind.EVENT]))
        assert [r.payload["seq"] for r in events] == list(range(1, journal.current_seq() + 1))
    finally:
        journal.close()


def test_cli_verify_and_export_work_while_another_process_writes(tmp_path: Path) -> None:
    """`infusiond journal verify|export` (separate processes, read-only) succeed during a
    burst of writes by the daemon's writer process."""
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.journal_writer_child", str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None
    try:
        assert int(writer.stdout.readline()) > 0  # the writer is writing
        cli = [sys.executable, "-m", "daemon.cli", "journal"]
        for _ in range(3):
            verify = subprocess.run(
                [*cli, "verify", "--data-dir", str(tmp_path)],
                check=False,
                capture_output=True,
                text=True,
            )
            assert verify.returncode == 0, verify.stderr
            assert ": ok, " in verify.stdout
        export = subprocess.run(
            [*cli, "export", "--data-dir", str(tmp_path)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert export.returncode == 0, export.stderr
        rows = [json.loads(line) for line in export.stdout.splitlines()]
        assert [r["n"] for r in rows] == list(range(1, len(rows) + 1))
        assert writer.poll() is None  # still writing all along
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()


@pytest.mark.asyncio
async def test_export_survives_a_tampered_unparseable_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A payload edited into invalid JSON is exported raw (and verify names the row)."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await _fill(journal, 2)
    _tamper(tmp_path, "UPDATE journal SET payload='{broken' WHERE n=2")
    assert main(["journal", "export", "--data-dir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[1]["payload"] == {"unparseable": "{broken"}
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 1
    assert "row 2" in capsys.readouterr().err
