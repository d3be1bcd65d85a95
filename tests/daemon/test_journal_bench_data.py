"""The journal_startup benchmark measures a real journal: the rows it generates in bulk form a
valid chain, with the indexed event types record_event would have written, so the daemon
opens it, verifies it and goes on counting seq from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.journal_startup import PUMPS, STATE_TYPES, build_journal
from daemon.journal import Journal, JournalKind
from tests.support.events import rate_changed

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def test_generated_journal_verifies_and_answers_like_a_full_scan(tmp_path: Path) -> None:
    build_journal(tmp_path, 12_000, end=NOW)
    journal = Journal.open(tmp_path, gateway_id="bench")
    try:
        report = journal.verify()
        assert report.ok, report
        assert report.rows == 12_000
        assert journal.current_seq() == 12_000
        rows = list(journal.rows(kinds=[JournalKind.EVENT]))
        for k in range(1, PUMPS + 1):
            pump_id = f"pump-{k}"
            newest: dict[str, int] = {}
            for row in rows:
                if row.pump_id == pump_id:
                    newest[row.payload["event"]["type"]] = row.n
            latest = journal.latest_events(pump_id, STATE_TYPES)
            assert {t: r.n for t, r in latest.items()} == newest
        since = NOW - timedelta(hours=4)
        recent = journal.recent_events("pump-1", ["rate_changed"], since=since, limit=10_000)
        assert [r.n for r in recent] == [
            r.n
            for r in rows
            if r.pump_id == "pump-1"
            and r.payload["event"]["type"] == "rate_changed"
            and r.ts >= "2026-11-26T04:00:00.000Z"
        ]
        with journal.transaction():
            assert journal.record_event("pump-1", rate_changed(1, 2), ts=NOW).seq == 12_001
        assert journal.verify().ok
    finally:
        journal.close()
