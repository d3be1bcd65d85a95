"""Retention: rows older than ``journal.retention_days`` go, oldest first and a bounded batch per
call, and nothing that state or safety needs goes with them. The chain still verifies (from the
recorded anchor), each pump's newest event of every type survives in a checkpoint row, a
command still awaiting its result and the unpublished outbox are kept, and the file shrinks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.base.paths import journal_path
from daemon.base.results import KeptOutcome
from daemon.cli import main
from daemon.journal import AsyncJournal, Journal, JournalKind, JournalRow
from tests.support.events import RawEvent

OLD = datetime(2026, 1, 1, tzinfo=UTC)
NOW = OLD + timedelta(days=120)
TYPES = ("program_changed", "rate_changed", "connection_changed", "alarm_raised", "alarm_cleared")
PUMPS = ("pump-1", "pump-2", "pump-3")
PRUNE_STEP = 1000


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path, gateway_id="gw")
    try:
        yield j
    finally:
        j.close()


def fill(j: Journal, start: datetime, count: int, *, pumps: tuple[str, ...] = PUMPS) -> None:
    """``count`` events (cycling through pumps and types, a minute apart) plus a verdict row
    every tenth, from ``start``."""
    with j.transaction():
        for i in range(count):
            pump_id = pumps[i % len(pumps)]
            event_type = TYPES[(i // len(pumps)) % len(TYPES)]
            when = start + timedelta(minutes=i)
            j.record_event(pump_id, RawEvent({"type": event_type, "i": i}), ts=when)
            if i % 10 == 0:
                j.append(JournalKind.VERDICT, {"i": i}, ts=when, pump_id=pump_id)


def latest_everywhere(j: Journal) -> dict[str, dict[str, JournalRow]]:
    return {p: j.latest_events(p, TYPES) for p in PUMPS}


def prune_all(j: Journal, now: datetime, max_rows: int) -> list[int]:
    """Prune until done; the rows each call removed."""
    removed = []
    while True:
        with j.transaction():
            report = j.prune(now, max_rows=max_rows)
        removed.append(report.deleted)
        if not report.more:
            return removed


def test_pruning_removes_old_rows_keeps_state_and_the_chain_verifies(
    journal: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old rows are gone, in bounded batches; latest_events answers exactly as before; verify
    (library and CLI) passes from the anchor; recent rows are untouched."""
    fill(journal, OLD, 400)
    recent_start = NOW - timedelta(days=1)
    fill(journal, recent_start, 7, pumps=("pump-1",))
    before = latest_everywhere(journal)
    recent_before = [r for r in journal.rows() if r.ts >= "2026-04-30"]
    removed = prune_all(journal, NOW, max_rows=100)
    assert removed[:4] == [100, 100, 100, 100]
    assert sum(removed) == 440  # 400 events + 40 verdicts, all older than 90 days
    assert latest_everywhere(journal) == before
    assert journal.latest_events("pump-1", ["rate_changed"])["rate_changed"].ts >= "2026-04-30"
    rows = list(journal.rows())
    anchor, _ = journal.anchor()
    assert anchor == 440
    assert rows[0].n == anchor + 1
    assert [r for r in rows if r.kind != JournalKind.CHECKPOINT] == recent_before
    report = journal.verify()
    assert report.ok, report
    assert report.anchor == 440
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 0
    assert f"ok, {len(rows)} rows" in capsys.readouterr().out


def test_state_survives_a_second_prune_of_its_own_checkpoints(journal: Journal) -> None:
    """When the checkpoint rows themselves get old, the next checkpoint carries their rows
    forward, merged with newer events of the types that had some."""
    fill(journal, OLD, 60)
    first = latest_everywhere(journal)
    prune_all(journal, NOW, max_rows=1000)
    later = NOW + timedelta(days=100)
    with journal.transaction():
        journal.record_event("pump-2", RawEvent({"type": "alarm_raised", "late": True}), ts=later)
    prune_all(journal, later + timedelta(days=1), max_rows=1000)
    after = latest_everywhere(journal)
    assert after["pump-1"] == first["pump-1"]
    assert after["pump-2"]["alarm_raised"].payload["event"] == {
        "type": "alarm_raised",
        "late": True,
    }
    assert {t: r for t, r in after["pump-2"].items() if t != "alarm_raised"} == {
        t: r for t, r in first["pump-2"].items() if t != "alarm_raised"
    }
    assert journal.verify().ok


def test_prune_keeps_unsettled_commands_and_the_outbox(journal: Journal) -> None:
    """An old command still at ``accepted`` stays (it is reconciled at start), an old settled
    command id is forgotten, and every unpublished event stays in the outbox."""
    with journal.transaction():
        for cid, phase in (("c-open", "accepted"), ("c-done", "applied")):
            journal.claim_command(cid, pump_id="pump-1", command={"id": cid}, ts=OLD)
            journal.set_command_outcome(
                cid, KeptOutcome.from_json({"phase": phase}), pump_id="pump-1", ts=OLD
            )
        journal.claim_command("c-inflight", pump_id="pump-1", command={}, ts=OLD)
    fill(journal, OLD, 30)
    pending = journal.outbox_pending(limit=10_000)
    prune_all(journal, NOW, max_rows=1000)
    assert [c.command_id for c in journal.interrupted_commands()] == ["c-open"]
    assert journal.interrupted_commands()[0].command == {"id": "c-open"}
    assert journal.outbox_pending(limit=10_000) == pending
    with journal.transaction():
        assert journal.claim_command("c-done", pump_id="pump-1", command={}, ts=NOW).is_new
        assert not journal.claim_command("c-open", pump_id="pump-1", command={}, ts=NOW).is_new
        assert not journal.claim_command("c-inflight", pump_id="pump-1", command={}, ts=NOW).is_new


def test_nothing_within_retention_is_removed(journal: Journal) -> None:
    """Rows younger than the retention are never pruned: a prune then is a no-op."""
    fill(journal, NOW - timedelta(days=89), 50)
    rows = list(journal.rows())
    with journal.transaction():
        report = journal.prune(NOW)
    assert (report.deleted, report.more, report.anchor) == (0, False, 0)
    assert list(journal.rows()) == rows
    with journal.transaction(), pytest.raises(ValueError, match="max_rows must be at least 1"):
        journal.prune(NOW, max_rows=0)


def test_the_prefix_stops_at_the_first_row_within_retention(journal: Journal) -> None:
    """Only a prefix goes: an old row after a recent one (a clock stepped back) is kept, so
    the chain never has a hole."""
    fill(journal, OLD, 10)
    fill(journal, NOW, 1)
    fill(journal, OLD, 5)
    prune_all(journal, NOW, max_rows=1000)
    assert journal.anchor()[0] == 11  # 10 events + 1 verdict
    assert len([r for r in journal.rows() if r.ts < "2026-02"]) == 6  # 5 events + 1 verdict


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DELETE FROM journal WHERE n = (SELECT min(n) FROM journal)", "is missing"),
        ("UPDATE meta SET value = '500' WHERE key = 'anchor_n'", "is missing"),
        ("UPDATE meta SET value = '10' WHERE key = 'anchor_n'", "row 11 is missing"),
        (f"UPDATE meta SET value = '{'f' * 64}' WHERE key = 'anchor_hash'", "prev_hash"),
        ("UPDATE meta SET value = '0' WHERE key = 'anchor_n'", "row 1 is missing"),
    ],
)
def test_tampering_with_the_start_after_pruning_is_detected(
    journal: Journal, tmp_path: Path, sql: str, reason: str
) -> None:
    """Removing rows after the anchor, or moving the anchor, breaks verify."""
    fill(journal, OLD, 40)
    fill(journal, NOW, 5)
    prune_all(journal, NOW, max_rows=1000)
    assert journal.verify().ok
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        conn.execute(sql)
    report = journal.verify()
    assert not report.ok
    assert report.reason is not None
    assert reason in report.reason


def test_moving_anchor_and_hash_together_is_caught_by_the_chained_anchor_row(
    journal: Journal, tmp_path: Path
) -> None:
    """Deleting more of the start and rewriting the meta anchor to match still fails: the
    newest anchor checkpoint row (hashed into the chain) names the real anchor."""
    fill(journal, OLD, 40)
    fill(journal, NOW, 5)
    prune_all(journal, NOW, max_rows=1000)
    first_live = next(iter(journal.rows()))
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        conn.execute("DELETE FROM journal WHERE n = ?", (first_live.n,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_n'", (str(first_live.n),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_hash'", (first_live.hash,))
    report = journal.verify()
    assert not report.ok
    assert report.reason is not None
    assert "no checkpoint row records that anchor" in report.reason


def test_pruned_space_goes_back_to_the_file_system(journal: Journal, tmp_path: Path) -> None:
    """A new journal uses auto_vacuum=incremental: after pruning 8 MB of old rows and a WAL
    checkpoint, the file is back under 1 MB."""
    with journal.transaction():
        for i in range(4000):
            journal.append(
                JournalKind.STATE, {"blob": "x" * 2000, "i": i}, ts=OLD, pump_id="pump-1"
            )
    journal._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    big = journal_path(tmp_path).stat().st_size
    assert big > 8_000_000
    prune_all(journal, NOW, max_rows=PRUNE_STEP)
    journal._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert journal_path(tmp_path).stat().st_size < 1_000_000
    assert journal.verify().ok


@pytest.mark.asyncio
async def test_async_prune_uses_the_configured_retention(tmp_path: Path) -> None:
    """``retention_days`` given at open decides what is old; each call is one bounded job."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw", retention_days=7) as journal:
        for day in range(10):
            await journal.record_event(
                "pump-1",
                RawEvent({"type": "rate_changed", "day": day}),
                ts=OLD + timedelta(days=day),
            )
        report = await journal.run(Journal.prune, OLD + timedelta(days=10), max_rows=2)
        assert (report.deleted, report.more) == (2, True)
        report = await journal.run(Journal.prune, OLD + timedelta(days=10))
        assert (report.deleted, report.more) == (1, False)  # days 0-2 are older than 7 days
        assert [r.payload["event"]["day"] for r in await journal.rows() if r.kind == "event"] == [
            3,
            4,
            5,
            6,
            7,
            8,
            9,
        ]
        assert (await journal.verify()).ok
