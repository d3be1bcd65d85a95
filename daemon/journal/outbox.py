"""The durable event outbox: each pump event gets the next ``seq``, its journal row and its
outbox entry (seq, pump, time, event) in one transaction; entries are deleted after the
broker's PUBACK and replayed in ``seq`` order until then. What is published (topic, envelope)
is the MQTT side's business: daemon/mqtt/event_messages.py."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from daemon.base.envelope import encode
from daemon.base.events import PumpEvent
from daemon.base.timefmt import format_ts
from daemon.journal.chain import JournalChain
from daemon.journal.records import JournalError, JournalKind, OutboxItem


class EventOutbox(JournalChain):
    """Pump events: journaled and queued for publication together."""

    def record_event(self, pump_id: str, event: PumpEvent, *, ts: datetime) -> OutboxItem:
        """Give the event the next seq, journal it and queue it in the outbox (one transaction).
        It becomes JSON here, the one place it is written: as the bus publishes it, with its
        pump's id (:meth:`PumpEvent.journaled`)."""
        self._require_transaction()
        if self._topics is None:
            raise JournalError("journal opened read-only")
        data = event.journaled(pump_id)
        event_type = data.get("type")  # as verify derives it: from what is written
        seq = self.current_seq() + 1
        self._set_meta("seq", str(seq))
        row = self._append(
            JournalKind.EVENT,
            {"seq": seq, "event": data},
            ts=format_ts(ts),
            pump_id=pump_id,
            event_type=event_type if isinstance(event_type, str) else None,
        )
        item = OutboxItem(seq, pump_id, row.ts, data)
        self._conn.execute(
            "INSERT INTO outbox (seq, pump_id, ts, event) VALUES (?, ?, ?, ?)",
            (item.seq, item.pump_id, item.ts, encode(item.data).decode()),
        )
        return item

    def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events from the outbox; returns how many were there."""
        self._require_transaction()
        cur = self._conn.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
        return cur.rowcount

    def outbox_pending(self, limit: int = 1000) -> list[OutboxItem]:
        """Events not yet acknowledged by the broker, oldest first."""
        items = []
        for seq, pump_id, ts, event in self._conn.execute(
            "SELECT seq, pump_id, ts, event FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ):
            try:
                data = json.loads(event)
            except json.JSONDecodeError as exc:
                raise JournalError(
                    f"journal {self.path}: outbox event {seq} unreadable: {exc}"
                ) from None
            items.append(OutboxItem(seq, pump_id, ts, data))
        return items
