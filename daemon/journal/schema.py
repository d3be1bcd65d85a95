"""The journal file's tables and indexes, creating them in a new file and migrating an older
file's (``infusiond.journal/1`` written before ``event_type``, the commands' ``command`` and
``phase``, or the outbox's ``pump_id``/``ts``/``event`` existed)."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.timefmt import format_ts, parse_ts
from daemon.base.topics import Topics
from daemon.journal.records import GENESIS_HASH, JournalError
from drivers.clock import utc_now

FORMAT = "infusiond.journal/1"

# Tables first, then (after migrating an older file's tables) the indexes. ``event_type`` is
# the ``type`` of an EVENT row's event, derived from the payload when written (not part of the
# hashed bytes, so old journals still verify; verify checks it against the payload).
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    n INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    pump_id TEXT,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    event_type TEXT
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    pump_id TEXT,
    received_at TEXT NOT NULL,
    first TEXT,
    command TEXT,
    phase TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    pump_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hl7_outbox (
    n INTEGER PRIMARY KEY,
    control_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    ack TEXT
)
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS journal_pump_kind ON journal (pump_id, kind, n);
CREATE INDEX IF NOT EXISTS journal_event_latest ON journal (pump_id, event_type, n)
    WHERE event_type IS NOT NULL;
CREATE INDEX IF NOT EXISTS journal_event_time ON journal (pump_id, event_type, ts)
    WHERE event_type IS NOT NULL;
CREATE INDEX IF NOT EXISTS commands_unsettled ON commands (received_at)
    WHERE phase = 'accepted';
CREATE INDEX IF NOT EXISTS commands_open ON commands (received_at) WHERE first IS NULL;
CREATE INDEX IF NOT EXISTS commands_received ON commands (received_at);
CREATE INDEX IF NOT EXISTS hl7_outbox_pending ON hl7_outbox (n) WHERE ack IS NULL;
CREATE INDEX IF NOT EXISTS journal_event_seq ON journal (json_extract(payload, '$.seq'))
    WHERE kind = 'event'
"""
# An infusiond.journal/1 file written before ``event_type`` and the commands' ``command`` and
# ``phase`` existed: add the columns and fill them from the rows (once, at the first open).
_MIGRATE_EVENT_TYPE = """
ALTER TABLE journal ADD COLUMN event_type TEXT;
UPDATE journal SET event_type = json_extract(payload, '$.event.type')
    WHERE kind = 'event' AND json_valid(payload)
    AND json_type(payload, '$.event.type') = 'text'
"""
_MIGRATE_COMMANDS = """
ALTER TABLE commands ADD COLUMN command TEXT;
ALTER TABLE commands ADD COLUMN phase TEXT;
UPDATE commands SET phase = json_extract(first, '$.phase')
    WHERE json_valid(first) AND json_type(first, '$.phase') = 'text';
UPDATE commands SET command = (
    SELECT json_extract(j.payload, '$.command') FROM journal AS j
    WHERE j.kind = 'command' AND j.pump_id IS commands.pump_id AND json_valid(j.payload)
    AND json_extract(j.payload, '$.id') = commands.id
    AND json_type(j.payload, '$.command') = 'object'
    ORDER BY j.n LIMIT 1
) WHERE phase = 'accepted'
"""


def statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def create_or_migrate(conn: sqlite3.Connection, gateway_id: str, path: Path) -> bool:
    """Create the tables (a new file; True) or bring an older file's up to date (False), then
    the indexes: inside the caller's transaction. A file of another format is refused before
    anything in it is changed."""
    for statement in statements(_TABLES):
        conn.execute(statement)
    created = conn.execute("SELECT value FROM meta WHERE key='session'").fetchone() is None
    if created:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("session", secrets.token_hex(8)),
                ("created_at", format_ts(utc_now())),
                ("gateway", gateway_id),
                ("seq", "0"),
                ("head_n", "0"),
                ("head_hash", GENESIS_HASH),
            ],
        )
    else:
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        found = row[0] if row is not None else None
        if found != FORMAT:
            raise JournalError(f"journal {path} has format {found!r}, expected {FORMAT!r}")
        if "event_type" not in columns(conn, "journal"):
            for statement in statements(_MIGRATE_EVENT_TYPE):
                conn.execute(statement)
        if "phase" not in columns(conn, "commands"):
            for statement in statements(_MIGRATE_COMMANDS):
                conn.execute(statement)
        if "topic" in columns(conn, "outbox"):
            _migrate_outbox(conn, path)
    conn.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [("anchor_n", "0"), ("anchor_hash", GENESIS_HASH)],
    )
    for statement in statements(_INDEXES):
        conn.execute(statement)
    return created


# The outbox of a file written before the journal stopped formatting MQTT envelopes: each row
# held the topic and the encoded ``pump.event`` envelope. Pending rows must still be published,
# byte for byte as they would have been: their pump, time and event are taken out of the
# envelope, and a row that would not give the same bytes back refuses the migration.
_OLD_OUTBOX = "SELECT seq, topic, payload FROM outbox ORDER BY seq"
_NEW_OUTBOX = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY,
    pump_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    event TEXT NOT NULL
)
"""


def _migrate_outbox(conn: sqlite3.Connection, path: Path) -> None:
    """Rewrite an older file's outbox rows as ``(seq, pump_id, ts, event)`` (inside the
    caller's transaction: all of them or, on a row it cannot read, none)."""
    rows = []
    for seq, topic, payload in conn.execute(_OLD_OUTBOX).fetchall():
        try:
            rows.append(_new_outbox_row(seq, str(topic), bytes(payload)))
        except (ValueError, TypeError, KeyError) as exc:
            raise JournalError(
                f"journal {path}: outbox event {seq} cannot be migrated ({exc}); nothing changed"
            ) from None
    conn.execute("DROP TABLE outbox")
    conn.execute(_NEW_OUTBOX)
    conn.executemany("INSERT INTO outbox (seq, pump_id, ts, event) VALUES (?, ?, ?, ?)", rows)


def _new_outbox_row(seq: int, topic: str, payload: bytes) -> tuple[int, str, str, str]:
    """One old row as a new one; ValueError (or TypeError, KeyError) when its envelope would
    not rebuild to the very bytes it held."""
    body = json.loads(payload)
    data, ts, gateway = body["data"], body["ts"], body["gateway"]
    pump_id = _pump_of_event_topic(topic, str(gateway))
    again = envelope(
        Kind.PUMP_EVENT,
        gateway=gateway,
        session=body["session"],
        seq=seq,
        ts=parse_ts(ts),
        data=data,
    )
    if encode(again) != payload:
        raise ValueError("its envelope does not rebuild to the same bytes")
    return seq, pump_id, ts, encode(data).decode()


def _pump_of_event_topic(topic: str, gateway: str) -> str:
    """``pump_id`` of the gateway's pump event topic ``topic``; ValueError otherwise."""
    parts = topic.split("/")
    pump_id = parts[-2] if len(parts) >= 2 else ""
    if not pump_id or Topics(gateway).pump_event(pump_id) != topic:
        raise ValueError(f"topic {topic!r} is not a pump event topic of gateway {gateway!r}")
    return pump_id
