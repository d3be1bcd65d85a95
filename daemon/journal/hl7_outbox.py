"""The HL7 outbox (IHE PCD messages to the EHR, :mod:`daemon.ihe`): the cursor of journal events
already turned into messages, the messages with their never-reused control ids, and the
EHR's acknowledgements."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from daemon.journal.chain import JournalChain
from daemon.journal.records import Hl7Item, JournalRow, row_from_sql

#: refused (AE/AR) HL7 messages kept in ``hl7_outbox`` for inspection; older ones are dropped
HL7_REFUSED_KEPT = 1000


class Hl7Outbox(JournalChain):
    """The ``hl7_outbox`` table and its event cursor."""

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
            row_from_sql(r)
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
