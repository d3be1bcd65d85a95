"""``bridge/request/events``: a fleet collector asks the gateway for journaled events it missed.

Request (JSON object, at most 16 KiB): ``{"id": "<1..64 chars>", "from_seq": int >= 1,
"to_seq": int >= from_seq, "session"?: "<the session the collector holds>"}``, with
``to_seq - from_seq < MAX_RANGE``. The answer, on ``bridge/response/events`` in the
``infusiond.bridge.events.response/1`` envelope, has data ``{"id", "status": "ok"|"error",
"session", "events": [...], "next_seq"?, "error"?}``: ``events`` are the event envelopes, as
first published plus a ``pump_id`` key, in seq order, in a bounded page (at most
``MAX_PAGE_EVENTS`` events and about ``MAX_PAGE_BYTES``); ``next_seq`` is present when the
range holds more events: ask again from there. Errors: ``too_large``, ``bad_json``,
``bad_request`` (the message names the field), ``retained``, ``unknown_session`` (the journal
was created anew: those events are gone), ``not_retained`` (``from_seq`` is older than the
oldest event the journal still holds; ``oldest_seq`` says which is, ask from there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.payload import JsonObject
from daemon.journal.records import JournalRow
from daemon.mqtt.event_messages import event_body

MAX_REQUEST_BYTES = 16 * 1024
MAX_ID_CHARS = 64
#: the widest range one request may name (the collector splits larger gaps)
MAX_RANGE = 100_000
MAX_PAGE_EVENTS = 500
MAX_PAGE_BYTES = 256 * 1024


class EventSource(Protocol):
    """What the handler reads (``daemon.journal.AsyncJournal`` provides it)."""

    @property
    def session(self) -> str: ...

    @property
    def seq(self) -> int: ...

    async def events_by_seq(self, from_seq: int, to_seq: int, limit: int) -> list[JournalRow]: ...

    async def oldest_event_seq(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class EventsRequest:
    """A valid request: its id and the seq range it asks for."""

    id: str
    from_seq: int
    to_seq: int


class _Refused(Exception):
    """A request answered with an error: its code, message and (``not_retained``) the oldest
    seq the journal still holds."""

    def __init__(self, code: str, message: str, *, oldest_seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.oldest_seq = oldest_seq

    def error_json(self) -> JsonObject:
        """The answer's ``error``."""
        error: JsonObject = {"code": self.code, "message": str(self)}
        if self.oldest_seq is not None:
            error["oldest_seq"] = self.oldest_seq
        return error


def _int_field(request: JsonObject, key: str) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Refused("bad_request", f"{key}: must be an integer, got {json.dumps(value)[:40]}")
    if not 1 <= value < 2**63:
        raise _Refused("bad_request", f"{key}: must be between 1 and 2^63-1, got {value}")
    return value


def parse_request(payload: bytes, *, retained: bool, session: str) -> EventsRequest:
    """The request in ``payload`` when it is valid; ``_Refused`` naming the field otherwise
    (its ``id`` is read first, so even a refusal can be matched to its request)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise _Refused("too_large", f"request is {len(payload)} bytes; at most {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Refused("bad_json", f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _Refused("bad_json", "request must be a JSON object")
    request_id = request.get("id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_ID_CHARS:
        raise _Refused("bad_request", f"id: must be a string of 1 to {MAX_ID_CHARS} characters")
    if retained:
        raise _Refused("retained", "a retained request is never answered from the journal")
    unknown = sorted(set(request) - {"id", "from_seq", "to_seq", "session"})
    if unknown:
        raise _Refused("bad_request", f"{unknown[0]}: unknown field")
    from_seq, to_seq = _int_field(request, "from_seq"), _int_field(request, "to_seq")
    if to_seq < from_seq:
        raise _Refused("bad_request", f"to_seq: {to_seq} is below from_seq {from_seq}")
    if to_seq - from_seq >= MAX_RANGE:
        raise _Refused("bad_request", f"to_seq: a request spans at most {MAX_RANGE} seqs")
    wanted = request.get("session")
    if wanted is not None and not isinstance(wanted, str):
        raise _Refused("bad_request", "session: must be a string")
    if wanted is not None and wanted != session:
        raise _Refused(
            "unknown_session",
            f"session {wanted[:64]!r} is not this journal's ({session}): its events are gone",
        )
    return EventsRequest(request_id, from_seq, to_seq)


def _request_id(payload: bytes) -> str | None:
    """The request's id when one can be read (for answers to invalid requests)."""
    try:
        request = json.loads(payload) if len(payload) <= MAX_REQUEST_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = request.get("id") if isinstance(request, dict) else None
    return value if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS else None


async def _check_retained(source: EventSource, from_seq: int) -> None:
    """Refuse ``not_retained`` when retention has removed the event ``from_seq``."""
    oldest = await source.oldest_event_seq()
    if from_seq <= source.seq and (oldest is None or from_seq < oldest):
        first = source.seq + 1 if oldest is None else oldest
        raise _Refused(
            "not_retained",
            f"from_seq: events before {first} are no longer in the journal (retention)",
            oldest_seq=first,
        )


async def answer(
    payload: bytes, *, retained: bool, source: EventSource, gateway: str
) -> JsonObject:
    """The data of the answer to one request (see the module docstring), as published."""
    session = source.session
    try:
        request = parse_request(payload, retained=retained, session=session)
        await _check_retained(source, request.from_seq)
        rows = await source.events_by_seq(request.from_seq, request.to_seq, MAX_PAGE_EVENTS)
    except _Refused as refused:
        return {
            "id": _request_id(payload),
            "status": "error",
            "session": session,
            "events": [],
            "error": refused.error_json(),
        }
    events: list[JsonObject] = []  # the event envelopes, as published
    size = 0
    next_seq: int | None = None
    for row in rows:
        seq = int(row.payload["seq"])
        body = event_body(
            gateway=gateway, session=session, seq=seq, ts=row.ts, data=row.payload["event"]
        )
        body["pump_id"] = row.pump_id
        size += len(encode(body)) + 1
        if events and size > MAX_PAGE_BYTES:
            next_seq = seq
            break
        events.append(body)
    if next_seq is None and len(rows) == MAX_PAGE_EVENTS and events[-1]["seq"] < request.to_seq:
        next_seq = events[-1]["seq"] + 1
    data: JsonObject = {"id": request.id, "status": "ok", "session": session, "events": events}
    if next_seq is not None:
        data["next_seq"] = next_seq
    return data


def response_body(data: JsonObject, *, gateway: str, source: EventSource, ts: datetime) -> bytes:
    """The answer's bytes: ``data`` in the ``infusiond.bridge.events.response/1`` envelope."""
    return encode(
        envelope(
            Kind.EVENTS_RESPONSE,
            gateway=gateway,
            session=source.session,
            seq=source.seq,
            ts=ts,
            data=data,
        )
    )
