"""Retention: removing a prefix of the chain in bounded steps, after checkpoint rows that carry
each pump's newest event of every type, and recording the new anchor the chain starts from."""

from __future__ import annotations

from datetime import datetime

from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts
from daemon.journal.queries import StateQueries
from daemon.journal.records import JournalKind, PruneReport, row_from_sql

#: journal rows one :meth:`Retention.prune` call removes at most (a few tens of ms of work)
PRUNE_BATCH = 5000
_AUTO_VACUUM_INCREMENTAL = 2


class Retention(StateQueries):
    """Pruning rows older than ``retention``."""

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

    def _carry_forward(self, after: int, through: int) -> dict[str, JsonObject]:
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
        carried: dict[str, JsonObject] = {}
        for pump_id, by_type in newest.items():
            latest = {t: row.to_dict() for t, row in self._checkpoint(pump_id).items()}
            for event_type, n in by_type.items():
                row = self._conn.execute(
                    "SELECT n, ts, kind, pump_id, payload, prev_hash, hash"
                    " FROM journal WHERE n = ?",
                    (n,),
                ).fetchone()
                latest[event_type] = row_from_sql(row).to_dict()
            carried[pump_id] = latest
        return carried
