"""What a journaled pump event looks like on the bus: its topic and its ``pump.event``
envelope (docs/integration-guide.md). The journal keeps events as data (seq, pump, time,
event); the bridge publishing its outbox and the backfill answering ``bridge/request/events``
both make the envelope here, so a replayed or backfilled event is the same bytes as first
published."""

from __future__ import annotations

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.payload import JsonObject
from daemon.base.timefmt import parse_ts
from daemon.base.topics import Topics
from daemon.journal.records import OutboxItem


def event_body(*, gateway: str, session: str, seq: int, ts: str, data: JsonObject) -> JsonObject:
    """The ``pump.event`` envelope of the event journaled at ``ts`` (the journal's text);
    ``data`` is the event as journaled, published byte for byte as it was first."""
    return envelope(
        Kind.PUMP_EVENT, gateway=gateway, session=session, seq=seq, ts=parse_ts(ts), data=data
    )


def outbox_message(item: OutboxItem, *, topics: Topics, session: str) -> tuple[str, bytes]:
    """``(topic, payload)`` that publishes an outbox entry of the journal ``session``."""
    body = event_body(
        gateway=topics.gateway_id, session=session, seq=item.seq, ts=item.ts, data=item.data
    )
    return topics.pump_event(item.pump_id), encode(body)
