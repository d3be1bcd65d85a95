"""The hash-chained SQLite journal, the gateway's ``session``/``seq``, command-id dedupe and the
durable event outbox (DESIGN.md section 6).

One SQLite file in WAL mode holds four tables:

``journal``   every command, verdict, override, event, alarm and state row, in order. Row ``n``
              carries ``hash = sha256(prev_hash + canonical row bytes)``, with ``prev_hash`` the
              hash of row ``n-1`` (64 zeros for row 1). ``meta.head_n``/``meta.head_hash`` are
              updated in the same transaction, so deleting rows at the tail is detected too.
``meta``      ``session`` (random, created with the file and never changed), ``seq`` (the last
              ``pump.event`` sequence number handed out; never reused), the chain head.
``commands``  command ids with their first outcome, so a repeated id is answered ``duplicate``
              across restarts.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from daemon.envelope import Kind, encode, envelope
from daemon.paths import ensure_writable_dir, journal_path
from daemon.timefmt import format_ts, utc_now
from daemon.topics import Topics
from protocol.errors import InfusiondError

FORMAT = "infusiond.journal/1"
GENESIS_HASH = "0" * 64
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    n INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    pump_id TEXT,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_pump_kind ON journal (pump_id, kind, n);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    pump_id TEXT,
    received_at TEXT NOT NULL,
    first TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class JournalKind(enum.StrEnum):
    """What a journal row records."""

    COMMAND = "command"
    VERDICT = "verdict"
    OVERRIDE = "override"
    EVENT = "event"
    ALARM = "alarm"
    STATE = "state"


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


@dataclass(frozen=True)
class OutboxItem:
    """An event waiting for the broker's PUBACK: ``payload`` is the full envelope, encoded."""

    seq: int
    topic: str
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
class VerifyReport:
    """Result of walking the chain."""

    rows: int
    first_bad: int | None = None
    reason: str | None = None
    head_ok: bool = True

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
    """Synchronous journal on one SQLite connection (not thread-safe: one owner thread)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        topics: Topics | None,
        created_anew: bool,
    ) -> None:
        self._conn = conn
        self.path = path
        self._topics = topics
        self.created_anew = created_anew
        self.session = self._meta("session")

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, gateway_id: str) -> Journal:
        """Open (creating it if needed) the journal in ``data_dir`` for writing.

        Raises :class:`daemon.paths.DataDirError` when ``data_dir`` is not writable and
        :class:`JournalError` when the file is not an infusiond journal.
        """
        ensure_writable_dir(data_dir)
        path = journal_path(data_dir)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(None, (part.strip() for part in _SCHEMA.split(";"))):
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
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"journal {path} is not usable: {exc}") from None
        if mode != "wal":
            conn.close()
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode})")
        journal = cls(conn, path, topics=Topics(gateway_id), created_anew=created)
        found = journal._meta("format")
        if found != FORMAT:
            journal.close()
            raise JournalError(f"journal {path} has format {found!r}, expected {FORMAT!r}")
        return journal

    @classmethod
    def open_readonly(cls, path: Path) -> Journal:
        """Open an existing journal read-only (safe while the daemon writes it: WAL)."""
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
        self._conn.close()

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

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
        self._require_transaction()
        n = int(self._meta("head_n")) + 1
        prev = self._meta("head_hash")
        ts_text = format_ts(ts)
        payload_text = encode(payload).decode()
        digest = row_hash(prev, n, ts_text, kind.value, pump_id, payload_text=payload_text)
        self._conn.execute(
            "INSERT INTO journal (n, ts, kind, pump_id, payload, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (n, ts_text, kind.value, pump_id, payload_text, prev, digest),
        )
        self._set_meta("head_n", str(n))
        self._set_meta("head_hash", digest)
        return JournalRow(n, ts_text, kind.value, pump_id, payload, prev, digest)

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
        self.append(JournalKind.EVENT, {"seq": seq, "event": data}, ts=ts, pump_id=pump_id)
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

        A new id is stored (outcome not yet known). A known id is not claimed again: the
        answer carries its recorded first outcome, and the journal row says ``duplicate``.
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
            "INSERT INTO commands (id, pump_id, received_at, first) VALUES (?, ?, ?, NULL)",
            (command_id, pump_id, format_ts(ts)),
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
        self._conn.execute(
            "INSERT INTO commands (id, pump_id, received_at, first) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET first=excluded.first",
            (command_id, pump_id, format_ts(ts), text),
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
        the command as received (scanned from that pump's command rows: rare, at start only)."""
        found: list[InterruptedCommand] = []
        for cid, pump_id, first in self._conn.execute(
            "SELECT id, pump_id, first FROM commands WHERE first LIKE '%accepted%'"
            " ORDER BY received_at"
        ):
            outcome = _loads_payload(first)
            if outcome.get("phase") != "accepted":
                continue
            command: dict[str, Any] | None = None
            for (payload,) in self._conn.execute(
                "SELECT payload FROM journal WHERE kind = ? AND pump_id IS ? ORDER BY n",
                (JournalKind.COMMAND.value, pump_id),
            ):
                row = _loads_payload(payload)
                if row.get("id") == cid and isinstance(row.get("command"), dict):
                    command = row["command"]
                    break
            found.append(InterruptedCommand(cid, pump_id, outcome, command))
        return found

    def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events from the outbox; returns how many were there."""
        self._require_transaction()
        cur = self._conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
        return cur.rowcount

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
        prev = GENESIS_HASH
        expected_n = 1
        cur = self._conn.execute(
            "SELECT n, ts, kind, pump_id, payload, prev_hash, hash FROM journal ORDER BY n"
        )
        for n, ts, kind, pid, payload, prev_hash, digest in cur:
            if n != expected_n:
                return VerifyReport(expected_n - 1, expected_n, f"row {expected_n} is missing")
            if prev_hash != prev:
                return VerifyReport(n - 1, n, "prev_hash does not match the previous row's hash")
            if not isinstance(payload, str) or not all(
                isinstance(v, str) for v in (ts, kind, prev_hash, digest)
            ):
                return VerifyReport(n - 1, n, "a column has the wrong type")
            if row_hash(prev_hash, n, ts, kind, pid, payload_text=payload) != digest:
                return VerifyReport(n - 1, n, "hash does not match the row's content")
            prev = digest
            expected_n += 1
        rows = expected_n - 1
        head_n, head_hash = int(self._meta("head_n")), self._meta("head_hash")
        if head_n != rows or head_hash != prev:
            bad = rows + 1 if head_n > rows else head_n + 1
            return VerifyReport(
                rows,
                bad,
                f"chain head says {head_n} rows but {rows} are present (rows removed at the end"
                " or head altered)",
                head_ok=False,
            )
        return VerifyReport(rows)


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
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)

    @classmethod
    async def open(cls, data_dir: Path, *, gateway_id: str, max_batch: int = 256) -> Self:
        """Open or create the journal in ``data_dir`` (raises DataDirError / JournalError)."""
        journal = await asyncio.to_thread(Journal.open, data_dir, gateway_id=gateway_id)
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
        conn = self._journal._conn
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(self._journal)
                except Exception as exc:  # noqa: BLE001 - forwarded to the awaiting caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, exc))
                    continue
                conn.execute("RELEASE job")
                outcomes.append((job, value, None))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = JournalError(f"journal {self._journal.path}: write failed: {exc}")
            outcomes = [(job, None, failure) for job in batch]
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
        return items

    async def interrupted_commands(self) -> list[InterruptedCommand]:
        """Commands a crash left at ``accepted`` (see :meth:`Journal.interrupted_commands`)."""
        return await self._submit(Journal.interrupted_commands)

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
