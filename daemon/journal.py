"""The hash-chained SQLite journal, the gateway's ``session``/``seq``, command-id dedupe and the
durable event outbox (docs/reliability.md, docs/operator-guide.md).

One SQLite file in WAL mode holds four tables:

``journal``   every command, verdict, override, event, alarm and state row, in order. Row ``n``
              carries ``hash = sha256(prev_hash + canonical row bytes)``, with ``prev_hash`` the
              hash of row ``n-1`` (64 zeros for row 1). ``meta.head_n``/``meta.head_hash`` are
              updated in the same transaction, so deleting rows at the tail is detected too.
              ``event_type`` (an event row's ``type``, outside the hashed bytes; verify checks it
              against the payload) is indexed by (pump, type, n) and (pump, type, ts): the state
              a restart needs is a few index lookups, whatever the journal's length.
``meta``      ``session`` (random, created with the file and never changed), ``seq`` (the last
              ``pump.event`` sequence number handed out; never reused), the chain head, and
              the retention anchor (``n``/``hash`` of the last pruned row; the chain starts
              after it).
``commands``  command ids with their first outcome, so a repeated id is answered ``duplicate``
              across restarts, and the command as received with its ``phase``, so the commands a
              crash left at ``accepted`` are one indexed query.
``outbox``    events written in the same transaction as their journal row and ``seq``
              increment, deleted after the broker's PUBACK, replayed in ``seq`` order.

Durability: ``synchronous=FULL``. In WAL mode ``NORMAL`` never corrupts the file, but a power
cut may lose the last committed transactions; here that would mean reusing ``seq`` numbers that
consumers already saw, and losing the record of a decision whose answer was already published.
The cost of FULL (one fsync of the WAL per commit) is amortised by group commit: the
:class:`AsyncJournal` writer thread commits every job queued while the previous commit ran in one
transaction.

:class:`Journal` is the synchronous core (its writing methods must run inside
:meth:`Journal.transaction`); :class:`AsyncJournal` is the facade the daemon uses: one dedicated
writer thread owns the connection, so SQLite never blocks the event loop.

Retention (:meth:`Journal.prune`) removes a prefix of the chain in bounded steps, after writing
``checkpoint`` rows that carry each pump's newest event of every type. Opening for writing holds
the data dir's lock (:func:`daemon.paths.lock_data_dir`): one daemon per journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from daemon.envelope import Kind, encode, envelope
from daemon.paths import DataDirLock, journal_path, lock_data_dir
from daemon.timefmt import format_ts, utc_now
from daemon.topics import Topics
from protocol.errors import InfusiondError

FORMAT = "infusiond.journal/1"
GENESIS_HASH = "0" * 64
_T = TypeVar("_T")

DEFAULT_RETENTION_DAYS = 90
#: journal rows one :meth:`Journal.prune` call removes at most (a few tens of ms of work)
PRUNE_BATCH = 5000
_AUTO_VACUUM_INCREMENTAL = 2

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
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
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


# every row in order, with the event type its payload gives (verify compares it to the column)
_VERIFY_TYPED = """
SELECT n, ts, kind, pump_id, payload, prev_hash, hash, event_type,
    CASE WHEN kind = 'event' AND json_valid(payload)
    AND json_type(payload, '$.event.type') = 'text'
    THEN json_extract(payload, '$.event.type') END
FROM journal ORDER BY n
"""
_VERIFY_LEGACY = """
SELECT n, ts, kind, pump_id, payload, prev_hash, hash, NULL, NULL FROM journal ORDER BY n
"""


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


class JournalKind(enum.StrEnum):
    """What a journal row records."""

    COMMAND = "command"
    VERDICT = "verdict"
    OVERRIDE = "override"
    EVENT = "event"
    ALARM = "alarm"
    STATE = "state"
    CHECKPOINT = "checkpoint"
    """Written by :meth:`Journal.prune`: with a pump id, the newest event of each type that the
    pruned rows held (so state rebuilt from the journal survives retention); without one, the
    anchor (``n`` and ``hash`` of the last pruned row) that the chain now starts from."""


class JournalError(InfusiondError):
    """The journal cannot be opened, read or written; the message names the file."""


class JournalCorrupt(JournalError):
    """The hash chain is broken; ``row`` is the first bad row number (None: the head record)."""

    def __init__(self, row: int | None, reason: str) -> None:
        where = f"row {row}" if row is not None else "chain head"
        super().__init__(f"journal broken at {where}: {reason}")
        self.row = row
        self.reason = reason


@dataclass(frozen=True)
class JournalRow:
    """One row of the chain."""

    n: int
    ts: str
    kind: str
    pump_id: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The row as ``journal export`` prints it."""
        return {
            "n": self.n,
            "ts": self.ts,
            "kind": self.kind,
            "pump_id": self.pump_id,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalRow:
        """The row back from :meth:`to_dict` (as a checkpoint row carries it)."""
        return cls(
            int(data["n"]),
            str(data["ts"]),
            str(data["kind"]),
            data["pump_id"],
            data["payload"],
            str(data["prev_hash"]),
            str(data["hash"]),
        )


@dataclass(frozen=True)
class OutboxItem:
    """An event waiting for the broker's PUBACK: ``payload`` is the full envelope, encoded."""

    seq: int
    topic: str
    payload: bytes


#: refused (AE/AR) HL7 messages kept in ``hl7_outbox`` for inspection; older ones are dropped
HL7_REFUSED_KEPT = 1000


@dataclass(frozen=True)
class Hl7Item:
    """One HL7 message waiting for the EHR's ACK (MSH-10 = ``control_id``)."""

    control_id: str
    kind: str  # "dec" | "ipec" | "acm"
    payload: bytes


@dataclass(frozen=True)
class InterruptedCommand:
    """A command whose last recorded outcome is ``accepted``: it was sent to a device but no
    verified result was recorded (the process stopped in between)."""

    command_id: str
    pump_id: str | None
    outcome: dict[str, Any]
    command: dict[str, Any] | None


@dataclass(frozen=True)
class CommandClaim:
    """Answer of :meth:`Journal.claim_command`: ``first`` is None for a new id.

    For a repeated id, ``first`` is the recorded outcome ``{"phase", "verdict"?, "error"?}``,
    or ``{}`` when the first command is still being processed (no outcome recorded yet).
    """

    command_id: str
    first: dict[str, Any] | None

    @property
    def is_new(self) -> bool:
        return self.first is None


@dataclass(frozen=True)
class PruneReport:
    """What one :meth:`Journal.prune` call did. ``more``: rows past retention remain (the call
    stopped at its batch size); call again."""

    deleted: int
    commands_deleted: int
    anchor: int
    more: bool


@dataclass(frozen=True)
class VerifyReport:
    """Result of walking the chain."""

    rows: int
    first_bad: int | None = None
    reason: str | None = None
    head_ok: bool = True
    #: the chain starts after row ``anchor`` (rows up to it were removed by retention)
    anchor: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None

    def raise_if_broken(self) -> None:
        if self.reason is not None:
            raise JournalCorrupt(self.first_bad, self.reason)


def row_hash(
    prev_hash: str, n: int, ts: str, kind: str, pump_id: str | None, *, payload_text: str
) -> str:
    """``sha256(prev_hash + canonical row bytes)`` as lowercase hex."""
    canonical = json.dumps(
        [n, ts, kind, pump_id, payload_text], separators=(",", ":"), ensure_ascii=False
    ).encode()
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


class Journal:
    """Synchronous journal on one SQLite connection (not thread-safe: one owner thread).

    Every write method runs inside :meth:`transaction` (or an :class:`AsyncJournal` job); any
    SQLite error of a write (disk full, I/O error, file-size limit, read-only file) surfaces as
    :class:`JournalError` with the transaction rolled back, so the file and everything read
    from it (``seq``, the chain head) stay as they were, and the next write can succeed.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        topics: Topics | None,
        created_anew: bool,
        lock: DataDirLock | None = None,
        retention: timedelta = timedelta(days=DEFAULT_RETENTION_DAYS),
    ) -> None:
        self._conn = conn
        self.path = path
        self._topics = topics
        self._lock = lock
        self.created_anew = created_anew
        self.retention = retention
        self.session = self._meta("session")

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        gateway_id: str,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> Journal:
        """Open (creating it if needed) the journal in ``data_dir`` for writing.

        Takes the data dir's lock for as long as the journal is open (one daemon per journal).
        Reads only the ``meta`` table: start-up cost does not grow with the journal (an older
        file is migrated once, on its first open by this version). Raises
        :class:`daemon.paths.DataDirError` when ``data_dir`` is not writable or another
        process holds it, and :class:`JournalError` when the file is not an infusiond journal.
        """
        if retention_days < 1:
            raise JournalError(f"journal retention must be at least 1 day, got {retention_days}")
        lock = lock_data_dir(data_dir)
        try:
            return cls._open_locked(data_dir, gateway_id, lock, timedelta(days=retention_days))
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(
        cls, data_dir: Path, gateway_id: str, lock: DataDirLock, retention: timedelta
    ) -> Journal:
        path = journal_path(data_dir)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None
        try:
            # freed pages go back to the file system (prune); takes effect on a new file only
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN IMMEDIATE")
            created = _create_or_migrate(conn, gateway_id, path)
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"journal {path} is not usable: {exc}") from None
        except JournalError:
            conn.close()  # rolls the open transaction back: nothing of a foreign file changed
            raise
        if mode != "wal":
            conn.close()
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode})")
        return cls(
            conn,
            path,
            topics=Topics(gateway_id),
            created_anew=created,
            lock=lock,
            retention=retention,
        )

    @classmethod
    def open_readonly(cls, path: Path) -> Journal:
        """Open an existing journal read-only (safe while the daemon writes it: WAL; takes
        no lock)."""
        if not path.is_file():
            raise JournalError(f"no journal at {path}")
        try:
            conn = sqlite3.connect(
                path.resolve().as_uri() + "?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA busy_timeout=5000")
            return cls(conn, path, topics=None, created_anew=False)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {path} is not readable: {exc}") from None

    def close(self) -> None:
        """Close the file and give the data dir's lock up."""
        try:
            self._conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    # -- transactions ----------------------------------------------------------------------

    def write_error(self, exc: sqlite3.Error) -> JournalError:
        """The :class:`JournalError` a failed write raises (names the file and the cause)."""
        return JournalError(f"journal {self.path}: write failed: {exc}")

    def rollback(self) -> None:
        """Abandon the open transaction, if any. SQLite may already have rolled it back (after
        a full disk or an I/O error); if even ROLLBACK fails, the next BEGIN retries it."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def begin(self) -> None:
        """BEGIN IMMEDIATE; JournalError if it fails or a transaction is already open."""
        if self._conn.in_transaction:
            raise JournalError(f"journal {self.path}: a transaction is already open")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.write_error(exc) from None

    def commit(self) -> None:
        """COMMIT, or roll back and raise JournalError: nothing of the transaction stays."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            raise self.write_error(exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error; an SQLite
        error inside it or at COMMIT is raised as :class:`JournalError`)."""
        self.begin()
        try:
            yield
        except sqlite3.Error as exc:
            self.rollback()
            raise self.write_error(exc) from None
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: a consistent view while a writer goes on."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("ROLLBACK")

    def _require_transaction(self) -> None:
        if not self._conn.in_transaction:
            raise JournalError("journal writes must run inside Journal.transaction()")

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            raise JournalError(f"journal {self.path}: meta key {key!r} missing")
        value: str = row[0]
        return value

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("UPDATE meta SET value=? WHERE key=?", (value, key))

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        kind: JournalKind,
        payload: dict[str, Any],
        *,
        ts: datetime,
        pump_id: str | None = None,
    ) -> JournalRow:
        """Append one chained row (inside a transaction)."""
        return self._append(kind, payload, ts=format_ts(ts), pump_id=pump_id)

    def _append(
        self,
        kind: JournalKind,
        payload: dict[str, Any],
        *,
        ts: str,
        pump_id: str | None,
        event_type: str | None = None,
    ) -> JournalRow:
        self._require_transaction()
        n = int(self._meta("head_n")) + 1
        prev = self._meta("head_hash")
        payload_text = encode(payload).decode()
        digest = row_hash(prev, n, ts, kind.value, pump_id, payload_text=payload_text)
        self._conn.execute(
            "INSERT INTO journal (n, ts, kind, pump_id, payload, prev_hash, hash, event_type)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (n, ts, kind.value, pump_id, payload_text, prev, digest, event_type),
        )
        self._set_meta("head_n", str(n))
        self._set_meta("head_hash", digest)
        return JournalRow(n, ts, kind.value, pump_id, payload, prev, digest)

    def current_seq(self) -> int:
        """The seq of the latest ``pump.event`` (0 before the first)."""
        return int(self._meta("seq"))

    def record_event(self, pump_id: str, data: dict[str, Any], *, ts: datetime) -> OutboxItem:
        """Give the event the next seq, journal it and queue it in the outbox (one transaction)."""
        self._require_transaction()
        if self._topics is None:
            raise JournalError("journal opened read-only")
        seq = self.current_seq() + 1
        self._set_meta("seq", str(seq))
        event_type = data.get("type")
        self._append(
            JournalKind.EVENT,
            {"seq": seq, "event": data},
            ts=format_ts(ts),
            pump_id=pump_id,
            event_type=event_type if isinstance(event_type, str) else None,
        )
        body = envelope(
            Kind.PUMP_EVENT,
            gateway=self._topics.gateway_id,
            session=self.session,
            seq=seq,
            ts=ts,
            data=data,
        )
        item = OutboxItem(seq, self._topics.pump_event(pump_id), encode(body))
        self._conn.execute(
            "INSERT INTO outbox (seq, topic, payload) VALUES (?, ?, ?)",
            (item.seq, item.topic, item.payload),
        )
        return item

    def claim_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: dict[str, Any],
        ts: datetime,
    ) -> CommandClaim:
        """Journal an incoming command and claim its id.

        A new id is stored with the command as received (outcome not yet known). A known id is
        not claimed again: the answer carries its recorded first outcome, and the journal row
        says ``duplicate``.
        """
        self._require_transaction()
        row = self._conn.execute("SELECT first FROM commands WHERE id=?", (command_id,)).fetchone()
        duplicate = row is not None
        self.append(
            JournalKind.COMMAND,
            {"id": command_id, "command": command, "duplicate": duplicate},
            ts=ts,
            pump_id=pump_id,
        )
        if duplicate:
            first: dict[str, Any] = json.loads(row[0]) if row[0] is not None else {}
            return CommandClaim(command_id, first)
        self._conn.execute(
            "INSERT INTO commands (id, pump_id, received_at, first, command, phase)"
            " VALUES (?, ?, ?, NULL, ?, NULL)",
            (command_id, pump_id, format_ts(ts), encode(command).decode()),
        )
        return CommandClaim(command_id, None)

    def set_command_outcome(
        self,
        command_id: str,
        outcome: dict[str, Any],
        *,
        pump_id: str | None,
        ts: datetime,
        kind: JournalKind = JournalKind.COMMAND,
    ) -> JournalRow:
        """Record the outcome (``{"phase", "verdict"?, "error"?}``) a duplicate will be told.

        Later phases of the same command (accepted -> applied) overwrite earlier ones, so
        ``first`` is the latest known outcome of the first execution. The outcome is also
        journaled (``kind`` verdict/override/command as the caller sees fit).
        """
        self._require_transaction()
        text = encode(outcome).decode()
        phase = outcome.get("phase")
        self._conn.execute(
            "INSERT INTO commands (id, pump_id, received_at, first, phase) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET first=excluded.first, phase=excluded.phase",
            (command_id, pump_id, format_ts(ts), text, phase if isinstance(phase, str) else None),
        )
        return self.append(kind, {"id": command_id, "outcome": outcome}, ts=ts, pump_id=pump_id)

    def admit_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: dict[str, Any],
        verdict: dict[str, Any],
        outcome: dict[str, Any],
        ts: datetime,
    ) -> CommandClaim:
        """Claim a command whose verdict (already evaluated) lets it go ahead: the command row,
        then, for a new id only, the verdict row and the ``outcome`` (``accepted``) row.

        One call, one transaction: nothing may reach the device before all three are durable,
        and none of them without the others. A repeated id writes only its ``duplicate``
        command row (as :meth:`claim_command`); the caller then decides as for any repeat.
        """
        claim = self.claim_command(command_id, pump_id=pump_id, command=command, ts=ts)
        if claim.is_new:
            self.append(
                JournalKind.VERDICT, {"id": command_id, "verdict": verdict}, ts=ts, pump_id=pump_id
            )
            self.set_command_outcome(command_id, outcome, pump_id=pump_id, ts=ts)
        return claim

    def settle_command(
        self,
        command_id: str,
        outcome: dict[str, Any],
        *,
        pump_id: str,
        events: list[dict[str, Any]],
        ts: datetime,
    ) -> list[OutboxItem]:
        """Record the events a command caused (each with the next seq, in order), then its
        final outcome: one transaction, so no outcome is durable without its events."""
        items = [self.record_event(pump_id, data, ts=ts) for data in events]
        self.set_command_outcome(command_id, outcome, pump_id=pump_id, ts=ts)
        return items

    def interrupted_commands(self) -> list[InterruptedCommand]:
        """Commands left at ``accepted`` (see :class:`InterruptedCommand`), oldest first, with
        the command as received: one indexed query, however long the journal."""
        return [
            InterruptedCommand(cid, pump_id, _loads_payload(first), _loads_command(command))
            for cid, pump_id, first, command in self._conn.execute(
                "SELECT id, pump_id, first, command FROM commands INDEXED BY commands_unsettled"
                " WHERE phase = 'accepted' ORDER BY received_at"
            )
        ]

    def settled_since(self, since: datetime) -> list[InterruptedCommand]:
        """Commands received at or after ``since`` whose recorded outcome is final after an
        ``accepted`` (applied, failed, uncertain), oldest first: after a crash, their result
        may have been journaled but never published."""
        return [
            InterruptedCommand(cid, pump_id, _loads_payload(first), None)
            for cid, pump_id, first in self._conn.execute(
                "SELECT id, pump_id, first FROM commands WHERE received_at >= ?"
                " AND phase IN ('applied', 'failed', 'uncertain') ORDER BY received_at",
                (format_ts(since),),
            )
        ]

    # -- state queries (what a restart rebuilds each pump from) ---------------------------

    def latest_events(self, pump_id: str, types: Collection[str]) -> dict[str, JournalRow]:
        """The newest EVENT row of each of ``types`` (the event's ``type``) for ``pump_id``;
        types never seen are absent. One index lookup per type. When retention has removed
        every row of a type, the row comes from the pump's newest checkpoint, unchanged (same
        ``n``, ``ts``, payload and hashes as when it was live)."""
        found: dict[str, JournalRow] = {}
        for event_type in dict.fromkeys(types):
            row = self._conn.execute(
                "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                " FROM journal INDEXED BY journal_event_latest"
                " WHERE pump_id = ? AND event_type = ? ORDER BY n DESC LIMIT 1",
                (pump_id, event_type),
            ).fetchone()
            if row is not None:
                found[event_type] = _row(row)
        missing = [t for t in dict.fromkeys(types) if t not in found]
        if missing:
            carried = self._checkpoint(pump_id)
            for event_type in missing:
                if event_type in carried:
                    found[event_type] = carried[event_type]
        return found

    def recent_events(
        self, pump_id: str, types: Collection[str], *, since: datetime, limit: int
    ) -> list[JournalRow]:
        """EVENT rows of ``types`` for ``pump_id`` with ``ts >= since``: the ``limit`` newest
        (by time, then journal order), returned oldest first. At most ``limit`` rows are read
        per type, through an index on (pump, type, time)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        start = format_ts(since)
        rows: list[JournalRow] = []
        for event_type in dict.fromkeys(types):
            rows.extend(
                _row(row)
                for row in self._conn.execute(
                    "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                    " FROM journal INDEXED BY journal_event_time"
                    " WHERE pump_id = ? AND event_type = ? AND ts >= ?"
                    " ORDER BY ts DESC, n DESC LIMIT ?",
                    (pump_id, event_type, start, limit),
                )
            )
        rows.sort(key=lambda r: (r.ts, r.n))
        return rows[-limit:]

    def events_before(
        self, pump_id: str, types: Collection[str], *, before: datetime
    ) -> JournalRow | None:
        """The newest EVENT row of ``types`` for ``pump_id`` with ``ts < before`` (None: none),
        read-only: one index lookup per type on (pump, type, time). What a history window
        starts from (the rate a pump was running when the window opened)."""
        end = format_ts(before)
        found: list[JournalRow] = []
        for event_type in dict.fromkeys(types):
            row = self._conn.execute(
                "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                " FROM journal INDEXED BY journal_event_time"
                " WHERE pump_id = ? AND event_type = ? AND ts < ?"
                " ORDER BY ts DESC, n DESC LIMIT 1",
                (pump_id, event_type, end),
            ).fetchone()
            if row is not None:
                found.append(_row(row))
        return max(found, key=lambda r: (r.ts, r.n), default=None)

    def events_by_seq(self, from_seq: int, to_seq: int, limit: int) -> list[JournalRow]:
        """EVENT rows with ``from_seq <= seq <= to_seq``, by seq, at most ``limit`` (through
        the index on the event's seq): what a fleet collector's backfill request reads."""
        return [
            _row(row)
            for row in self._conn.execute(
                "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                " FROM journal INDEXED BY journal_event_seq"
                " WHERE kind = 'event' AND json_extract(payload, '$.seq') BETWEEN ? AND ?"
                " ORDER BY json_extract(payload, '$.seq') LIMIT ?",
                (from_seq, to_seq, limit),
            )
        ]

    def oldest_event_seq(self) -> int | None:
        """The seq of the oldest event still in the journal (retention removes a prefix), or
        None when it holds none."""
        row = self._conn.execute(
            "SELECT min(json_extract(payload, '$.seq')) FROM journal INDEXED BY journal_event_seq"
            " WHERE kind = 'event'"
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _checkpoint(self, pump_id: str) -> dict[str, JournalRow]:
        """The event rows the pump's newest checkpoint carries, by type (empty: none)."""
        row = self._conn.execute(
            "SELECT payload FROM journal INDEXED BY journal_pump_kind"
            " WHERE pump_id = ? AND kind = ? ORDER BY n DESC LIMIT 1",
            (pump_id, JournalKind.CHECKPOINT.value),
        ).fetchone()
        if row is None:
            return {}
        latest = _loads_payload(row[0]).get("latest")
        if not isinstance(latest, dict):
            return {}
        return {t: JournalRow.from_dict(data) for t, data in latest.items()}

    # -- retention -------------------------------------------------------------------------

    def anchor(self) -> tuple[int, str]:
        """``(n, hash)`` of the last row removed by retention (``(0, GENESIS_HASH)``: none,
        also for a file no version with retention has opened for writing yet)."""
        rows = dict(
            self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('anchor_n', 'anchor_hash')"
            )
        )
        return int(rows.get("anchor_n", "0")), str(rows.get("anchor_hash", GENESIS_HASH))

    def prune(self, now: datetime, *, max_rows: int = PRUNE_BATCH) -> PruneReport:
        """Remove at most ``max_rows`` of the oldest rows older than the retention (inside a
        transaction), so that one call never holds the writer for long; ``more`` says whether
        to call again.

        Only a prefix of the chain is removed: it ends before the first row that is still
        within retention. Before it goes, each pump that had events in it gets a
        ``checkpoint`` row carrying the newest row of each event type (from the prefix, or
        carried forward from its previous checkpoint), so :meth:`latest_events` answers as
        before; a last ``checkpoint`` row without pump records the new anchor (``n`` and
        ``hash`` of the last removed row), which ``meta`` also holds and :meth:`verify` starts
        from. Command ids older than the retention are forgotten too, except those whose
        outcome is still ``accepted`` or not yet recorded. The outbox is never touched.
        """
        self._require_transaction()
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        cutoff = format_ts(now - self.retention)
        commands_deleted = self._conn.execute(
            "DELETE FROM commands WHERE id IN (SELECT id FROM commands INDEXED BY"
            " commands_received WHERE received_at < ? AND phase IS NOT NULL"
            " AND phase != 'accepted' LIMIT ?)",
            (cutoff, max_rows),
        ).rowcount
        anchor_n, _ = self.anchor()
        last: tuple[int, str] | None = None
        more = False
        for index, (n, ts, digest) in enumerate(
            self._conn.execute(
                "SELECT n, ts, hash FROM journal WHERE n > ? ORDER BY n LIMIT ?",
                (anchor_n, max_rows + 1),
            ).fetchall()
        ):
            if not isinstance(ts, str) or ts >= cutoff:
                break
            if index == max_rows:
                more = True
                break
            last = (n, digest)
        if last is None:
            return PruneReport(0, commands_deleted, anchor_n, more=False)
        last_n, last_hash = last
        carried = self._carry_forward(anchor_n, last_n)
        deleted = self._conn.execute(
            "DELETE FROM journal WHERE n > ? AND n <= ?", (anchor_n, last_n)
        ).rowcount
        self._set_meta("anchor_n", str(last_n))
        self._set_meta("anchor_hash", last_hash)
        through = {"n": last_n, "hash": last_hash}
        stamp = format_ts(now)
        for pump_id, latest in sorted(carried.items()):
            self._append(
                JournalKind.CHECKPOINT,
                {"pruned_through": through, "latest": latest},
                ts=stamp,
                pump_id=pump_id,
            )
        self._append(
            JournalKind.CHECKPOINT,
            {"pruned_through": through, "retention_days": self.retention.days},
            ts=stamp,
            pump_id=None,
        )
        self._release_free_pages()
        return PruneReport(deleted, commands_deleted, last_n, more=more)

    def _release_free_pages(self) -> None:
        """Hand the pages freed by pruning back to the file system (auto_vacuum=INCREMENTAL;
        the file shrinks at the next WAL checkpoint). Each step of ``incremental_vacuum``
        frees one page, and Python's sqlite3 does not step a statement that returns no
        columns: so one execution per page, on one cursor (each re-execution resets it)."""
        (mode,) = self._conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode != _AUTO_VACUUM_INCREMENTAL:
            return  # a file created before this version: freed pages are reused, not returned
        (free,) = self._conn.execute("PRAGMA freelist_count").fetchone()
        cursor = self._conn.cursor()
        try:
            for _ in range(free):
                cursor.execute("PRAGMA incremental_vacuum(1)")
        finally:
            cursor.close()

    def _carry_forward(self, after: int, through: int) -> dict[str, dict[str, Any]]:
        """For each pump with events or checkpoints in rows ``(after, through]``: the newest row
        of each event type as of ``through`` (``to_dict`` form), from those rows or the pump's
        newest checkpoint."""
        newest: dict[str, dict[str, int]] = {}
        for pump_id, event_type, n in self._conn.execute(
            "SELECT pump_id, event_type, max(n) FROM journal WHERE n > ? AND n <= ?"
            " AND event_type IS NOT NULL AND pump_id IS NOT NULL GROUP BY pump_id, event_type",
            (after, through),
        ):
            newest.setdefault(pump_id, {})[event_type] = n
        for (pump_id,) in self._conn.execute(
            "SELECT DISTINCT pump_id FROM journal WHERE n > ? AND n <= ? AND kind = ?"
            " AND pump_id IS NOT NULL",
            (after, through, JournalKind.CHECKPOINT.value),
        ):
            newest.setdefault(pump_id, {})
        carried: dict[str, dict[str, Any]] = {}
        for pump_id, by_type in newest.items():
            latest = {t: row.to_dict() for t, row in self._checkpoint(pump_id).items()}
            for event_type, n in by_type.items():
                row = self._conn.execute(
                    "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                    " FROM journal WHERE n = ?",
                    (n,),
                ).fetchone()
                latest[event_type] = _row(row).to_dict()
            carried[pump_id] = latest
        return carried

    def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events from the outbox; returns how many were there."""
        self._require_transaction()
        cur = self._conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
        return cur.rowcount

    # -- HL7 outbox (IHE PCD messages to the EHR, daemon/ihe) --------------------------------

    def hl7_start(self) -> int:
        """The journal row after which events still have to become HL7 messages. The first
        call on a journal starts at its head: history from before HL7 was enabled is not sent."""
        self._require_transaction()
        self._conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('hl7_cursor', ?)",
            (self._meta("head_n"),),
        )
        return int(self._meta("hl7_cursor"))

    def hl7_events_after(self, after: int, limit: int = 200) -> list[JournalRow]:
        """Event rows after journal row ``after``, in order (the HL7 follower's input)."""
        return [
            _row(r)
            for r in self._conn.execute(
                "SELECT n, ts, kind, pump_id, payload, prev_hash, hash FROM journal "
                "WHERE n > ? AND kind = 'event' ORDER BY n LIMIT ?",
                (after, limit),
            )
        ]

    def hl7_clinicians(self, command_ids: Collection[str]) -> dict[str, str]:
        """``by.clinician`` of each known command id (who asked for a change, for IPEC)."""
        found: dict[str, str] = {}
        for command_id in command_ids:
            row = self._conn.execute(
                "SELECT json_extract(command, '$.by.clinician') FROM commands "
                "WHERE id = ? AND json_valid(command)",
                (command_id,),
            ).fetchone()
            if row is not None and isinstance(row[0], str):
                found[command_id] = row[0]
        return found

    def hl7_enqueue(
        self, messages: Sequence[tuple[str, Callable[[str], bytes]]], *, cursor: int | None
    ) -> list[str]:
        """Give each message the next control id (``<session>-<k>``, never reused), store it
        and, in the same transaction, move the event cursor: an event becomes its messages
        exactly once, even across a crash. Returns the control ids."""
        self._require_transaction()
        self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('hl7_msg', '0')")
        k = int(self._meta("hl7_msg"))
        ids: list[str] = []
        for kind, build in messages:
            k += 1
            control_id = f"{self.session}-{k}"
            self._conn.execute(
                "INSERT INTO hl7_outbox (control_id, kind, payload) VALUES (?, ?, ?)",
                (control_id, kind, build(control_id)),
            )
            ids.append(control_id)
        self._set_meta("hl7_msg", str(k))
        if cursor is not None:
            self._set_meta("hl7_cursor", str(cursor))
        return ids

    def hl7_settle(self, control_id: str, ack: str) -> None:
        """Record the EHR's answer: an ``AA`` message is deleted; an ``AE``/``AR`` one is kept
        with its code (re-sending it would be refused again) for inspection, and is no longer
        pending; only the newest :data:`HL7_REFUSED_KEPT` refusals are kept."""
        self._require_transaction()
        if ack == "AA":
            self._conn.execute("DELETE FROM hl7_outbox WHERE control_id=?", (control_id,))
        else:
            self._conn.execute("UPDATE hl7_outbox SET ack=? WHERE control_id=?", (ack, control_id))
            self._conn.execute(  # keep the newest HL7_REFUSED_KEPT refusals, not all forever
                "DELETE FROM hl7_outbox WHERE ack IS NOT NULL AND n < ("
                "SELECT n FROM hl7_outbox WHERE ack IS NOT NULL ORDER BY n DESC LIMIT 1 OFFSET ?)",
                (HL7_REFUSED_KEPT - 1,),
            )

    def hl7_pending(self, limit: int = 100) -> list[Hl7Item]:
        """Messages not yet acknowledged, oldest first (the order they must be sent in)."""
        return [
            Hl7Item(control_id, kind, bytes(payload))
            for control_id, kind, payload in self._conn.execute(
                "SELECT control_id, kind, payload FROM hl7_outbox WHERE ack IS NULL "
                "ORDER BY n LIMIT ?",
                (limit,),
            )
        ]

    # -- reading ---------------------------------------------------------------------------

    def outbox_pending(self, limit: int = 1000) -> list[OutboxItem]:
        """Events not yet acknowledged by the broker, oldest first."""
        return [
            OutboxItem(seq, topic, bytes(payload))
            for seq, topic, payload in self._conn.execute(
                "SELECT seq, topic, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
        ]

    def rows(
        self,
        *,
        after: int = 0,
        pump_id: str | None = None,
        kinds: Iterable[JournalKind] | None = None,
    ) -> Iterator[JournalRow]:
        """Rows with ``n > after`` in order, optionally for one pump and some kinds."""
        sql = "SELECT n, ts, kind, pump_id, payload, prev_hash, hash FROM journal WHERE n > ?"
        params: list[Any] = [after]
        if pump_id is not None:
            sql += " AND pump_id = ?"
            params.append(pump_id)
        if kinds is not None:
            wanted = [k.value for k in kinds]
            sql += f" AND kind IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        for n, ts, kind, pid, payload, prev, digest in self._conn.execute(
            sql + " ORDER BY n", params
        ):
            yield JournalRow(n, ts, kind, pid, _loads_payload(payload), prev, digest)

    def export(self) -> Iterator[dict[str, Any]]:
        """Every row as a dict (``journal export``), from one consistent snapshot."""
        with self.snapshot():
            for row in self.rows():
                yield row.to_dict()

    def verify(self) -> VerifyReport:
        """Walk the whole chain; the report names the first broken row."""
        with self.snapshot():
            return self._verify()

    def _verify(self) -> VerifyReport:
        anchor_n, prev = self.anchor()
        expected_n = anchor_n + 1
        # a file written before event_type existed (read-only here, so not migrated yet)
        typed_file = "event_type" in _columns(self._conn, "journal")
        cur = self._conn.execute(_VERIFY_TYPED if typed_file else _VERIFY_LEGACY)
        confirmed = anchor_n == 0
        for n, ts, kind, pid, payload, prev_hash, digest, event_type, typed in cur:
            found = n - 1 - anchor_n
            if n != expected_n:
                return VerifyReport(
                    found, expected_n, f"row {expected_n} is missing", anchor=anchor_n
                )
            if prev_hash != prev:
                return VerifyReport(
                    found, n, "prev_hash does not match the previous row's hash", anchor=anchor_n
                )
            if not isinstance(payload, str) or not all(
                isinstance(v, str) for v in (ts, kind, prev_hash, digest)
            ):
                return VerifyReport(found, n, "a column has the wrong type", anchor=anchor_n)
            if row_hash(prev_hash, n, ts, kind, pid, payload_text=payload) != digest:
                return VerifyReport(
                    found, n, "hash does not match the row's content", anchor=anchor_n
                )
            if typed_file and event_type != typed:
                return VerifyReport(
                    found, n, "event_type does not match the payload's event type", anchor=anchor_n
                )
            if kind == JournalKind.CHECKPOINT.value and pid is None:
                through = _loads_payload(payload).get("pruned_through")
                confirmed = through == {"n": anchor_n, "hash": self._meta("anchor_hash")}
            prev = digest
            expected_n += 1
        rows = expected_n - 1 - anchor_n
        if not confirmed:
            return VerifyReport(
                rows,
                anchor_n,
                f"the chain starts after row {anchor_n} but no checkpoint row records that"
                " anchor (rows removed at the start or anchor altered)",
                anchor=anchor_n,
            )
        head_n, head_hash = int(self._meta("head_n")), self._meta("head_hash")
        if head_n != expected_n - 1 or head_hash != prev:
            last = expected_n - 1
            bad = last + 1 if head_n > last else head_n + 1
            return VerifyReport(
                rows,
                bad,
                f"chain head says {head_n} rows but the chain ends at row {last} (rows removed"
                " at the end or head altered)",
                head_ok=False,
                anchor=anchor_n,
            )
        return VerifyReport(rows, anchor=anchor_n)


def _row(row: tuple[Any, ...]) -> JournalRow:
    n, ts, kind, pump_id, payload, prev_hash, digest = row
    return JournalRow(n, ts, kind, pump_id, _loads_payload(payload), prev_hash, digest)


def _loads_command(text: object) -> dict[str, Any] | None:
    """A stored command as received; None when not recorded (a command claimed by an older
    version whose journal row could not be found at migration)."""
    return _loads_payload(text) if isinstance(text, str) else None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _create_or_migrate(conn: sqlite3.Connection, gateway_id: str, path: Path) -> bool:
    """Create the tables (a new file; True) or bring an older file's up to date (False), then
    the indexes: inside the caller's transaction. A file of another format is refused before
    anything in it is changed."""
    for statement in _statements(_TABLES):
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
        if "event_type" not in _columns(conn, "journal"):
            for statement in _statements(_MIGRATE_EVENT_TYPE):
                conn.execute(statement)
        if "phase" not in _columns(conn, "commands"):
            for statement in _statements(_MIGRATE_COMMANDS):
                conn.execute(statement)
    conn.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [("anchor_n", "0"), ("anchor_hash", GENESIS_HASH)],
    )
    for statement in _statements(_INDEXES):
        conn.execute(statement)
    return created


def _loads_payload(text: object) -> dict[str, Any]:
    """The stored payload; a tampered, unparseable one is shown raw instead of crashing."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return {"unparseable": text}
    return value if isinstance(value, dict) else {"value": value}


@dataclass
class _Job:
    fn: Callable[[Journal], Any]
    future: asyncio.Future[Any]


_STOP = object()


class AsyncJournal:
    """The journal for the event loop: every call runs on one writer thread.

    Jobs queued while a commit is in flight are committed together (group commit, at most
    ``max_batch`` per transaction); each job runs in its own savepoint, so one failing job
    does not undo the others. A job whose caller was cancelled still completes.
    """

    def __init__(self, journal: Journal, loop: asyncio.AbstractEventLoop, max_batch: int) -> None:
        self._journal = journal
        self._loop = loop
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._seq = 0
        self._closed = False
        # transactions committed so far (each is one fsync under synchronous=FULL); written by
        # the writer thread only, read by tests and diagnostics
        self.commits = 0
        self.outbox_changed = asyncio.Event()
        #: set when HL7 messages are queued (daemon/ihe waits on it)
        self.hl7_changed = asyncio.Event()
        #: set when events are journaled (the HL7 follower turns them into messages)
        self.events_added = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        gateway_id: str,
        max_batch: int = 256,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> Self:
        """Open or create the journal in ``data_dir`` (raises DataDirError / JournalError);
        see :meth:`Journal.open`."""
        journal = await asyncio.to_thread(
            Journal.open, data_dir, gateway_id=gateway_id, retention_days=retention_days
        )
        self = cls(journal, asyncio.get_running_loop(), max_batch)
        self._thread.start()
        self._seq = await self._submit(Journal.current_seq)
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def session(self) -> str:
        return self._journal.session

    @property
    def created_anew(self) -> bool:
        return self._journal.created_anew

    @property
    def path(self) -> Path:
        return self._journal.path

    @property
    def seq(self) -> int:
        """The seq of the latest committed event: what non-event envelopes carry."""
        return self._seq

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun (no job is taken any more)."""
        return self._closed

    async def aclose(self) -> None:
        """Finish queued jobs, then close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[_Job] = []
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            batch.append(first)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                assert isinstance(nxt, _Job)
                batch.append(nxt)
            self._execute(batch)
        self._journal.close()

    def _execute(self, batch: list[_Job]) -> None:
        """Run ``batch`` in one transaction, each job in its own savepoint. A job's own error
        (a payload that cannot be encoded...) undoes that job only. An SQLite error (full disk,
        I/O error, read-only file...) undoes the whole transaction, since SQLite may already
        have rolled it back: every job of the batch fails with JournalError, and nothing of it
        is in the file. Either way this thread goes on with the next batch."""
        journal = self._journal
        conn = journal._conn
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            journal.rollback()  # in case a failed ROLLBACK left the last batch's open
            journal.begin()
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(journal)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - forwarded to the awaiting caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, exc))
                    continue
                conn.execute("RELEASE job")
                outcomes.append((job, value, None))
            journal.commit()
            self.commits += 1
        except sqlite3.Error as exc:
            journal.rollback()
            failure = journal.write_error(exc)
            outcomes = [(job, None, failure) for job in batch]
        except JournalError as exc:  # BEGIN or COMMIT failed (already rolled back)
            outcomes = [(job, None, exc) for job in batch]
        for job, value, error in outcomes:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                self._loop.call_soon_threadsafe(_resolve, job.future, value, error)

    async def _submit(self, fn: Callable[[Journal], _T]) -> _T:
        if self._closed:
            raise JournalError(f"journal {self._journal.path} is closed")
        future: asyncio.Future[_T] = self._loop.create_future()
        self._queue.put(_Job(fn, future))
        return await future

    # -- API ---------------------------------------------------------------------------------

    async def append(
        self,
        kind: JournalKind,
        payload: dict[str, Any],
        *,
        pump_id: str | None = None,
        ts: datetime | None = None,
    ) -> JournalRow:
        """Append a row (command, verdict, override, alarm, state...)."""
        when = ts or utc_now()
        return await self._submit(lambda j: j.append(kind, payload, ts=when, pump_id=pump_id))

    async def record_event(
        self, pump_id: str, data: dict[str, Any], *, ts: datetime | None = None
    ) -> OutboxItem:
        """Journal an event with the next seq and queue it for publication (durably)."""
        when = ts or utc_now()
        item = await self._submit(lambda j: j.record_event(pump_id, data, ts=when))
        self._seq = max(self._seq, item.seq)
        self.outbox_changed.set()
        self.events_added.set()
        return item

    async def record_events(
        self, pump_id: str, events: list[dict[str, Any]], *, ts: datetime | None = None
    ) -> list[OutboxItem]:
        """Journal several events (consecutive seqs) as one job: all of them or none."""
        when = ts or utc_now()
        wanted = list(events)
        items = await self._submit(
            lambda j: [j.record_event(pump_id, data, ts=when) for data in wanted]
        )
        if items:
            self._seq = max(self._seq, items[-1].seq)
            self.outbox_changed.set()
            self.events_added.set()
        return items

    async def claim_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: dict[str, Any],
        ts: datetime | None = None,
    ) -> CommandClaim:
        """Journal a command and claim its id (see :meth:`Journal.claim_command`)."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.claim_command(command_id, pump_id=pump_id, command=command, ts=when)
        )

    async def set_command_outcome(
        self,
        command_id: str,
        outcome: dict[str, Any],
        *,
        pump_id: str | None,
        kind: JournalKind = JournalKind.COMMAND,
        ts: datetime | None = None,
    ) -> JournalRow:
        """Record a command's outcome for dedupe and journal it."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.set_command_outcome(
                command_id, outcome, pump_id=pump_id, ts=when, kind=kind
            )
        )

    async def admit_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: dict[str, Any],
        verdict: dict[str, Any],
        outcome: dict[str, Any],
        ts: datetime | None = None,
    ) -> CommandClaim:
        """Claim + verdict + ``accepted`` outcome as one job, hence one transaction (see
        :meth:`Journal.admit_command`)."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.admit_command(
                command_id,
                pump_id=pump_id,
                command=command,
                verdict=verdict,
                outcome=outcome,
                ts=when,
            )
        )

    async def settle_command(
        self,
        command_id: str,
        outcome: dict[str, Any],
        *,
        pump_id: str,
        events: list[dict[str, Any]],
        ts: datetime | None = None,
    ) -> list[OutboxItem]:
        """The command's events and final outcome as one job, hence one transaction (see
        :meth:`Journal.settle_command`); the events are then queued for publication."""
        when = ts or utc_now()
        wanted = list(events)
        items = await self._submit(
            lambda j: j.settle_command(command_id, outcome, pump_id=pump_id, events=wanted, ts=when)
        )
        if items:
            self._seq = max(self._seq, items[-1].seq)
            self.outbox_changed.set()
            self.events_added.set()
        return items

    async def interrupted_commands(self) -> list[InterruptedCommand]:
        """Commands a crash left at ``accepted`` (see :meth:`Journal.interrupted_commands`)."""
        return await self._submit(Journal.interrupted_commands)

    async def settled_since(self, since: datetime) -> list[InterruptedCommand]:
        """Commands settled recently (see :meth:`Journal.settled_since`)."""
        return await self._submit(lambda j: j.settled_since(since))

    async def latest_events(self, pump_id: str, types: Collection[str]) -> dict[str, JournalRow]:
        """The newest event of each type for a pump (see :meth:`Journal.latest_events`)."""
        wanted = list(types)
        return await self._submit(lambda j: j.latest_events(pump_id, wanted))

    async def recent_events(
        self, pump_id: str, types: Collection[str], *, since: datetime, limit: int
    ) -> list[JournalRow]:
        """A pump's events of some types since a time, oldest first (see
        :meth:`Journal.recent_events`)."""
        wanted = list(types)
        return await self._submit(
            lambda j: j.recent_events(pump_id, wanted, since=since, limit=limit)
        )

    async def events_before(
        self, pump_id: str, types: Collection[str], *, before: datetime
    ) -> JournalRow | None:
        """A pump's newest event of some types before a time (see
        :meth:`Journal.events_before`)."""
        wanted = list(types)
        return await self._submit(lambda j: j.events_before(pump_id, wanted, before=before))

    async def events_by_seq(self, from_seq: int, to_seq: int, limit: int) -> list[JournalRow]:
        """See :meth:`Journal.events_by_seq`."""
        return await self._submit(lambda j: j.events_by_seq(from_seq, to_seq, limit))

    async def oldest_event_seq(self) -> int | None:
        """See :meth:`Journal.oldest_event_seq`."""
        return await self._submit(lambda j: j.oldest_event_seq())

    async def prune(self, now: datetime, *, max_rows: int = PRUNE_BATCH) -> PruneReport:
        """One bounded step of retention (see :meth:`Journal.prune`): call at start and then
        periodically (hourly), again at once while ``more``; other jobs run in between."""
        return await self._submit(lambda j: j.prune(now, max_rows=max_rows))

    async def hl7_start(self) -> int:
        """See :meth:`Journal.hl7_start`."""
        return await self._submit(lambda j: j.hl7_start())

    async def hl7_events_after(self, after: int, limit: int = 200) -> list[JournalRow]:
        """See :meth:`Journal.hl7_events_after`."""
        return await self._submit(lambda j: j.hl7_events_after(after, limit))

    async def hl7_clinicians(self, command_ids: Collection[str]) -> dict[str, str]:
        """See :meth:`Journal.hl7_clinicians`."""
        wanted = list(command_ids)
        return await self._submit(lambda j: j.hl7_clinicians(wanted))

    async def hl7_enqueue(
        self, messages: Sequence[tuple[str, Callable[[str], bytes]]], *, cursor: int | None
    ) -> list[str]:
        """See :meth:`Journal.hl7_enqueue`; wakes the HL7 sender."""
        wanted = list(messages)
        ids = await self._submit(lambda j: j.hl7_enqueue(wanted, cursor=cursor))
        if ids:
            self.hl7_changed.set()
        return ids

    async def hl7_settle(self, control_id: str, ack: str) -> None:
        """See :meth:`Journal.hl7_settle`."""
        await self._submit(lambda j: j.hl7_settle(control_id, ack))

    async def hl7_pending(self, limit: int = 100) -> list[Hl7Item]:
        """See :meth:`Journal.hl7_pending`."""
        return await self._submit(lambda j: j.hl7_pending(limit))

    async def outbox_pending(self, limit: int = 1000) -> list[OutboxItem]:
        """Unacknowledged events, oldest first."""
        return await self._submit(lambda j: j.outbox_pending(limit))

    async def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Forget events the broker acknowledged."""
        wanted = list(seqs)
        return await self._submit(lambda j: j.outbox_ack(wanted))

    async def rows(
        self,
        *,
        after: int = 0,
        pump_id: str | None = None,
        kinds: Iterable[JournalKind] | None = None,
    ) -> list[JournalRow]:
        """Rows after ``after`` (e.g. a pump's recent verdicts for the gate's history)."""
        wanted = list(kinds) if kinds is not None else None
        return await self._submit(
            lambda j: list(j.rows(after=after, pump_id=pump_id, kinds=wanted))
        )

    async def verify(self) -> VerifyReport:
        """Walk the chain (inside the writer's transaction: a consistent view)."""
        return await self._submit(Journal._verify)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
