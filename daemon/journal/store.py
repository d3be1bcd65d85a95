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
transaction. One exception: a batch made only of outbox acks commits at ``NORMAL`` (atomic, no
fsync of its own; the next FULL commit makes it durable). A power cut can undo such an ack, and
the event is then published again with its seq (delivery is at least once anyway); in exchange
an ack never makes the next command's claim wait for its fsync.

:class:`Journal` is the synchronous core (its writing methods must run inside
:meth:`Journal.transaction`); :class:`AsyncJournal` is the facade the daemon uses: one dedicated
writer thread owns the connection, so SQLite never blocks the event loop.

Retention (:meth:`Journal.prune`) removes a prefix of the chain in bounded steps, after writing
``checkpoint`` rows that carry each pump's newest event of every type. Opening for writing holds
the data dir's lock (:func:`daemon.base.paths.lock_data_dir`): one daemon per journal.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from daemon.base.paths import DEFAULT_RETENTION_DAYS, DataDirLock, journal_path, lock_data_dir
from daemon.base.topics import Topics
from daemon.journal.commands import CommandLog
from daemon.journal.hl7_outbox import Hl7Outbox
from daemon.journal.records import JournalError
from daemon.journal.retention import Retention
from daemon.journal.schema import create_or_migrate
from daemon.journal.verify import ChainVerifier


class Journal(CommandLog, Hl7Outbox, Retention, ChainVerifier):
    """The synchronous journal: the chain and every job on it (see the module docstring);
    open it with :meth:`open` (writing) or :meth:`open_readonly`."""

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
        :class:`daemon.base.paths.DataDirError` when ``data_dir`` is not writable or another
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
            created = create_or_migrate(conn, gateway_id, path)
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
