"""State queries: what a restart rebuilds each pump from and what a history window starts from,
each a few index lookups however long the journal (falling back on the pump's newest
checkpoint when retention removed the rows)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from daemon.base.timefmt import format_ts
from daemon.journal.chain import JournalChain
from daemon.journal.records import JournalKind, JournalRow, loads_payload, row_from_sql


class StateQueries(JournalChain):
    """Indexed reads of pump events by (pump, type, n) and (pump, type, time)."""

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
                found[event_type] = row_from_sql(row)
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
                row_from_sql(row)
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
                found.append(row_from_sql(row))
        return max(found, key=lambda r: (r.ts, r.n), default=None)

    def events_by_seq(self, from_seq: int, to_seq: int, limit: int) -> list[JournalRow]:
        """EVENT rows with ``from_seq <= seq <= to_seq``, by seq, at most ``limit`` (through
        the index on the event's seq): what a fleet collector's backfill request reads."""
        return [
            row_from_sql(row)
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
        latest = loads_payload(row[0]).get("latest")
        if not isinstance(latest, dict):
            return {}
        return {t: JournalRow.from_dict(data) for t, data in latest.items()}
