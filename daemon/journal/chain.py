"""The hash chain itself: one SQLite connection, its transactions, the ``meta`` head record,
appending chained rows and reading them back in order.

:class:`JournalChain` is the base of :class:`daemon.journal.store.Journal`; the journal's other
jobs (command dedupe, the event outbox, the HL7 outbox, state queries, retention, verify) are
its subclasses, one module each, all on this one connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.base.envelope import encode
from daemon.base.paths import DEFAULT_RETENTION_DAYS, DataDirLock
from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts
from daemon.base.topics import Topics
from daemon.journal.records import (
    GENESIS_HASH,
    JournalError,
    JournalKind,
    JournalRow,
    loads_payload,
    row_hash,
)


class JournalChain:
    """The chain on one SQLite connection (not thread-safe: one owner thread).

    Every write method runs inside :meth:`transaction` (or an
    :class:`~daemon.journal.writer.AsyncJournal` job); any SQLite error of a write (disk full,
    I/O error, file-size limit, read-only file) surfaces as :class:`JournalError` with the
    transaction rolled back, so the file and everything read from it (``seq``, the chain head)
    stay as they were, and the next write can succeed.
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

    def close(self) -> None:
        """Close the file and give the data dir's lock up."""
        try:
            self._conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    # -- transactions ------------------------------------------------------------------------

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

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """One job inside the open transaction: an exception other than an SQLite error undoes
        that job only (ROLLBACK TO its savepoint) and propagates; an SQLite error propagates
        untouched (SQLite may have rolled the whole transaction back already)."""
        self._conn.execute("SAVEPOINT job")
        try:
            yield
        except sqlite3.Error:
            raise
        except Exception:
            self._conn.execute("ROLLBACK TO job")
            self._conn.execute("RELEASE job")
            raise
        self._conn.execute("RELEASE job")

    def set_durable(self, *, durable: bool) -> None:
        """``synchronous=FULL`` (each commit fsyncs the WAL) when ``durable``, else ``NORMAL``
        (still atomic; a power cut may undo the last commits). Outside a transaction."""
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")

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

    # -- the chain ---------------------------------------------------------------------------

    def append(
        self,
        kind: JournalKind,
        payload: JsonObject,
        *,
        ts: datetime,
        pump_id: str | None = None,
    ) -> JournalRow:
        """Append one chained row (inside a transaction)."""
        return self._append(kind, payload, ts=format_ts(ts), pump_id=pump_id)

    def _append(
        self,
        kind: JournalKind,
        payload: JsonObject,
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

    def anchor(self) -> tuple[int, str]:
        """``(n, hash)`` of the last row removed by retention (``(0, GENESIS_HASH)``: none,
        also for a file no version with retention has opened for writing yet)."""
        rows = dict(
            self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('anchor_n', 'anchor_hash')"
            )
        )
        return int(rows.get("anchor_n", "0")), str(rows.get("anchor_hash", GENESIS_HASH))

    def footprint(self) -> tuple[int, int]:
        """(events in the outbox, bytes of the journal file and its write-ahead log): the
        figures of daemon/mqtt/metrics.py."""
        (depth,) = self._conn.execute("SELECT count(*) FROM outbox").fetchone()
        size = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
        return int(depth), size

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
            yield JournalRow(n, ts, kind, pid, loads_payload(payload), prev, digest)

    def export(self) -> Iterator[JsonObject]:
        """Every row as a dict (``journal export``), from one consistent snapshot."""
        with self.snapshot():
            for row in self.rows():
                yield row.to_dict()
