"""The journal queries a restart rebuilds each pump's state from: the newest event of each type,
the recent events of some types, the commands a crash left unsettled. Each is an index lookup
(checked on the query plan, so a 1,000,000-row journal costs what a 10-row one does), and a
journal written before these indexes existed is migrated on open and still verifies."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.base.paths import journal_path
from daemon.base.results import KeptOutcome
from daemon.cli import main
from daemon.journal import FORMAT, GENESIS_HASH, AsyncJournal, Journal, JournalError, row_hash
from tests.support.events import RawEvent, rate_changed

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
TYPES = ("program_changed", "rate_changed", "connection_changed", "alarm_raised", "alarm_cleared")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path, gateway_id="gw")
    try:
        yield j
    finally:
        j.close()


def events(j: Journal, pump_id: str, *specs: tuple[str, int]) -> None:
    """Record events ``(type, minutes after T0)`` in one transaction."""
    with j.transaction():
        for event_type, minutes in specs:
            j.record_event(
                pump_id,
                RawEvent({"type": event_type, "pump_id": pump_id, "at_min": minutes}),
                ts=T0 + timedelta(minutes=minutes),
            )


def plan(j: Journal, sql: str, *params: object) -> str:
    return " / ".join(row[3] for row in j._conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_latest_events_gives_the_newest_row_of_each_type_for_that_pump_only(
    journal: Journal,
) -> None:
    """One row per asked type, the last written; other pumps' rows and types never seen are
    not in the answer."""
    events(journal, "pump-1", ("program_changed", 0), ("rate_changed", 1), ("rate_changed", 2))
    events(journal, "pump-2", ("rate_changed", 3), ("alarm_raised", 4))
    events(journal, "pump-1", ("alarm_raised", 5), ("alarm_cleared", 6), ("rate_changed", 7))
    latest = journal.latest_events("pump-1", TYPES)
    assert set(latest) == {"program_changed", "rate_changed", "alarm_raised", "alarm_cleared"}
    assert latest["rate_changed"].payload["event"]["at_min"] == 7
    assert latest["alarm_raised"].payload["event"]["at_min"] == 5
    assert all(row.pump_id == "pump-1" and row.kind == "event" for row in latest.values())
    # the rows are the chain's own (same n and hash as a full read)
    by_n = {row.n: row for row in journal.rows()}
    assert all(by_n[row.n] == row for row in latest.values())
    assert journal.latest_events("pump-9", TYPES) == {}
    assert journal.latest_events("pump-2", ["connection_changed"]) == {}


def test_latest_events_is_one_index_lookup_per_type(journal: Journal) -> None:
    """The newest row of a type is found by index (no scan of the journal)."""
    events(journal, "pump-1", ("rate_changed", 0))
    sql = (
        "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
        " FROM journal INDEXED BY journal_event_latest"
        " WHERE pump_id = ? AND event_type = ? ORDER BY n DESC LIMIT 1"
    )
    assert plan(journal, sql, "pump-1", "rate_changed") == (
        "SEARCH journal USING INDEX journal_event_latest (pump_id=? AND event_type=?)"
    )


def test_recent_events_returns_the_newest_since_a_time_oldest_first(journal: Journal) -> None:
    """Only the asked types of that pump, ts >= since, at most ``limit`` (the newest ones),
    returned in time order."""
    events(
        journal,
        "pump-1",
        ("rate_changed", 0),
        ("alarm_raised", 10),
        ("rate_changed", 20),
        ("program_changed", 30),
        ("rate_changed", 40),
        ("rate_changed", 50),
    )
    events(journal, "pump-2", ("rate_changed", 45))
    since = T0 + timedelta(minutes=10)
    got = journal.recent_events(
        "pump-1", ["rate_changed", "program_changed"], since=since, limit=10
    )
    assert [r.payload["event"]["at_min"] for r in got] == [20, 30, 40, 50]
    newest = journal.recent_events(
        "pump-1", ["rate_changed", "program_changed"], since=since, limit=2
    )
    assert [r.payload["event"]["at_min"] for r in newest] == [40, 50]
    assert journal.recent_events("pump-1", ["alarm_cleared"], since=T0, limit=5) == []
    with pytest.raises(ValueError, match="limit must be at least 1"):
        journal.recent_events("pump-1", ["rate_changed"], since=T0, limit=0)


def test_recent_events_reads_by_index_on_pump_type_and_time(journal: Journal) -> None:
    events(journal, "pump-1", ("rate_changed", 0))
    sql = (
        "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
        " FROM journal INDEXED BY journal_event_time"
        " WHERE pump_id = ? AND event_type = ? AND ts >= ? ORDER BY ts DESC, n DESC LIMIT ?"
    )
    assert plan(journal, sql, "pump-1", "rate_changed", "2026", 5) == (
        "SEARCH journal USING INDEX journal_event_time (pump_id=? AND event_type=? AND ts>?)"
    )


def test_interrupted_commands_come_from_the_commands_table_with_the_command(
    journal: Journal,
) -> None:
    """A command left at ``accepted`` is found with the command as received, oldest first;
    settled ones are not; the query reads only the unsettled commands' index."""
    with journal.transaction():
        for i, phase in enumerate(["accepted", "applied", "accepted", "rejected"]):
            cid = f"c-{i}"
            journal.claim_command(
                cid, pump_id="pump-1", command={"id": cid, "n": i}, ts=T0 + timedelta(seconds=i)
            )
            journal.set_command_outcome(
                cid,
                KeptOutcome.from_json({"phase": phase}),
                pump_id="pump-1",
                ts=T0 + timedelta(seconds=i),
            )
    found = journal.interrupted_commands()
    assert [(c.command_id, c.command) for c in found] == [
        ("c-0", {"id": "c-0", "n": 0}),
        ("c-2", {"id": "c-2", "n": 2}),
    ]
    assert found[0].outcome == KeptOutcome.from_json({"phase": "accepted"})
    sql = (
        "SELECT id, pump_id, first, command FROM commands INDEXED BY commands_unsettled"
        " WHERE phase = 'accepted' ORDER BY received_at"
    )
    assert plan(journal, sql) == "SCAN commands USING INDEX commands_unsettled"


@pytest.mark.asyncio
async def test_async_wrappers_answer_like_the_sync_queries(tmp_path: Path) -> None:
    """AsyncJournal runs the same queries on its writer thread."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        for minutes, event_type in enumerate(["program_changed", "rate_changed", "rate_changed"]):
            await journal.record_event(
                "pump-1", RawEvent({"type": event_type}), ts=T0 + timedelta(minutes=minutes)
            )
        latest = await journal.run(
            Journal.latest_events, "pump-1", ["rate_changed", "alarm_raised"]
        )
        assert list(latest) == ["rate_changed"]
        assert latest["rate_changed"].payload["seq"] == 3
        recent = await journal.run(
            Journal.recent_events, "pump-1", ["rate_changed", "program_changed"], since=T0, limit=2
        )
        assert [r.payload["seq"] for r in recent] == [2, 3]


# -- a journal written by the previous version (no event_type, no command/phase columns) ---

LEGACY_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE journal (n INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL,
    pump_id TEXT, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX journal_pump_kind ON journal (pump_id, kind, n);
CREATE TABLE commands (id TEXT PRIMARY KEY, pump_id TEXT, received_at TEXT NOT NULL, first TEXT);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL);
"""


def write_legacy_journal(data_dir: Path) -> None:
    """What the previous version left: chained rows (same canonical bytes), commands with
    their outcome only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        ("event", "pump-1", {"seq": 1, "event": {"type": "program_changed", "drug": "x"}}),
        ("command", "pump-1", {"id": "c-1", "command": {"id": "c-1", "v": 1}, "duplicate": False}),
        ("command", "pump-1", {"id": "c-1", "outcome": {"phase": "accepted"}}),
        ("event", "pump-1", {"seq": 2, "event": {"type": "rate_changed", "to": 5}}),
        ("event", "pump-2", {"seq": 3, "event": {"type": "rate_changed", "to": 9}}),
        ("event", "pump-1", {"seq": 4, "event": {"type": "rate_changed", "to": 6}}),
    ]
    conn = sqlite3.connect(journal_path(data_dir))
    with conn:
        conn.executescript(LEGACY_SCHEMA)
        prev = GENESIS_HASH
        for n, (kind, pump_id, payload) in enumerate(rows, start=1):
            ts = f"2026-11-26T08:00:0{n}.000Z"
            text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            digest = row_hash(prev, n, ts, kind, pump_id, payload_text=text)
            conn.execute(
                "INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?)",
                (n, ts, kind, pump_id, text, prev, digest),
            )
            prev = digest
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("session", "0123456789abcdef"),
                ("created_at", "2026-11-26T08:00:00.000Z"),
                ("gateway", "gw"),
                ("seq", "4"),
                ("head_n", str(len(rows))),
                ("head_hash", prev),
            ],
        )
        conn.execute(
            "INSERT INTO commands VALUES ('c-1', 'pump-1', '2026-11-26T08:00:02.000Z', ?)",
            ('{"phase":"accepted"}',),
        )
    conn.close()


def test_a_journal_of_the_previous_version_still_verifies_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`journal verify` on a file no new daemon has opened yet: ok, nothing rewritten."""
    write_legacy_journal(tmp_path)
    assert main(["journal", "verify", "--data-dir", str(tmp_path)]) == 0
    assert "ok, 6 rows" in capsys.readouterr().out


def test_a_journal_of_the_previous_version_is_migrated_on_open(tmp_path: Path) -> None:
    """Opening it adds and fills the new columns: the chain still verifies (hashes unchanged),
    the state queries answer for the old rows, and the interrupted command comes back with
    the command as it was received."""
    write_legacy_journal(tmp_path)
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        assert journal.session == "0123456789abcdef"
        assert not journal.created_anew
        report = journal.verify()
        assert report.ok, report
        assert report.rows == 6
        latest = journal.latest_events("pump-1", TYPES)
        assert {t: r.n for t, r in latest.items()} == {"program_changed": 1, "rate_changed": 6}
        [interrupted] = journal.interrupted_commands()
        assert interrupted.command_id == "c-1"
        assert interrupted.command == {"id": "c-1", "v": 1}
        with journal.transaction():
            journal.record_event("pump-1", rate_changed(6, 7), ts=T0)
        assert journal.latest_events("pump-1", ["rate_changed"])["rate_changed"].n == 7
        assert journal.current_seq() == 5
        assert journal.verify().ok
    finally:
        journal.close()


def test_verify_detects_an_event_type_column_that_disagrees_with_the_payload(
    tmp_path: Path,
) -> None:
    """The indexed event type is not part of the hashed bytes, so verify checks it against
    the payload: editing it to hide an alarm from the state queries is caught."""
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        events(journal, "pump-1", ("alarm_raised", 0), ("rate_changed", 1))
    finally:
        journal.close()
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        conn.execute("UPDATE journal SET event_type='alarm_cleared' WHERE n=1")
    ro = Journal.open_readonly(journal_path(tmp_path))
    try:
        report = ro.verify()
    finally:
        ro.close()
    assert report.first_bad == 1
    assert report.reason is not None
    assert "event_type" in report.reason


def test_a_journal_of_another_format_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    """A file naming another format (a newer version's) is not migrated: JournalError naming
    the file and both formats, and its tables are exactly as they were."""
    write_legacy_journal(tmp_path)
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        conn.execute("UPDATE meta SET value='infusiond.journal/9' WHERE key='format'")
    with pytest.raises(JournalError, match=r"journal\.sqlite3 has format 'infusiond\.journal/9'"):
        Journal.open(tmp_path, gateway_id="gw")
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(journal)")}
    assert "event_type" not in columns
    # the refused open did not keep the data dir locked: another process can take it
    taken = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, pathlib, daemon.base.paths as p; "
                "p.lock_data_dir(pathlib.Path(sys.argv[1]))"
            ),
            str(tmp_path),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=False,
    )
    assert taken.returncode == 0, taken.stderr
