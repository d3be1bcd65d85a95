"""Verifying the chain: every row's hash and link, the event type column against the payload,
the retention anchor and the head record; the report names the first broken row."""

from __future__ import annotations

from daemon.journal.chain import JournalChain
from daemon.journal.records import JournalKind, VerifyReport, loads_payload, row_hash
from daemon.journal.schema import columns

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


class ChainVerifier(JournalChain):
    """Walking the whole chain."""

    def verify(self) -> VerifyReport:
        """Walk the whole chain; the report names the first broken row."""
        with self.snapshot():
            return self._verify()

    def _verify(self) -> VerifyReport:
        anchor_n, prev = self.anchor()
        expected_n = anchor_n + 1
        # a file written before event_type existed (read-only here, so not migrated yet)
        typed_file = "event_type" in columns(self._conn, "journal")
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
                through = loads_payload(payload).get("pruned_through")
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
