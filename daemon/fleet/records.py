"""What the collector stores, parsed from MQTT messages: one frozen dataclass per kind.

:func:`parse_message` turns ``(topic, payload)`` into a record or raises :class:`BadMessage`
naming the field; nothing malformed reaches the store. The topic's gateway (and pump) must
match the envelope's.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from daemon.base.envelope import Kind
from daemon.base.payload import JsonObject
from daemon.base.timefmt import parse_ts
from daemon.base.topics import is_topic_id
from daemon.fleet.errors import FleetError

TOPIC_ROOT = "infusiond"
_T = TypeVar("_T")


class BadMessage(FleetError):
    """A message the collector cannot store; the message names the topic and the field."""


class Subject(enum.StrEnum):
    """Which topic of the contract a message came from."""

    EVENT = "pump/+/event"
    COMMAND_RESULT = "pump/+/command/result"
    PUMP_STATE = "pump/+/state"
    BRIDGE_INFO = "bridge/info"
    BRIDGE_STATE = "bridge/state"
    EVENTS_RESPONSE = "bridge/response/events"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One ``pump.event``: identity ``(gateway, session, seq)``; ``data`` as published (the
    store keeps it verbatim as jsonb: the object is the edge, never read field by field here)."""

    gateway: str
    session: str
    seq: int
    ts: datetime
    pump_id: str
    type: str
    data: JsonObject


@dataclass(frozen=True, slots=True)
class CommandResultRecord:
    """One ``pump.command.result``; ``digest`` (SHA-256 of the published bytes) is its identity."""

    gateway: str
    session: str
    seq: int
    ts: datetime
    pump_id: str
    command_id: str | None
    phase: str
    data: JsonObject  # as published, stored verbatim (jsonb)
    digest: bytes


@dataclass(frozen=True, slots=True)
class PumpStateRecord:
    """One ``pump.state``; ``digest`` (SHA-256 of the published bytes) is its identity."""

    gateway: str
    session: str
    seq: int
    ts: datetime
    pump_id: str
    data: JsonObject  # as published, stored verbatim (jsonb)
    digest: bytes


@dataclass(frozen=True, slots=True)
class BridgeInfoRecord:
    """One ``bridge.info``: the gateway's session, current seq and description."""

    gateway: str
    session: str
    seq: int
    ts: datetime
    data: JsonObject  # as published, stored verbatim (jsonb)


@dataclass(frozen=True, slots=True)
class BridgeStateRecord:
    """``bridge/state``: ``online`` or ``offline`` (the last will); no envelope."""

    gateway: str
    state: str


@dataclass(frozen=True, slots=True)
class ResponseError:
    """Why a gateway refused a backfill request (``code``: ``unknown_session``,
    ``not_retained``...; ``oldest_seq``: the oldest it still has, with ``not_retained``)."""

    code: str | None
    message: str
    oldest_seq: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str) -> ResponseError:
        """The ``data.error`` object of an answer; :class:`BadMessage` naming the field."""
        code, message, oldest = data.get("code"), data.get("message", ""), data.get("oldest_seq")
        if code is not None and not isinstance(code, str):
            raise BadMessage(f"{where}: field 'data.error.code' must be a string")
        if not isinstance(message, str):
            raise BadMessage(f"{where}: field 'data.error.message' must be a string")
        if oldest is not None and (isinstance(oldest, bool) or not isinstance(oldest, int)):
            oldest = None  # not a seq: the answer is followed up as if it named none
        return cls(code, message, oldest)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"code": self.code, "message": self.message}
        if self.oldest_seq is not None:
            out["oldest_seq"] = self.oldest_seq
        return out


@dataclass(frozen=True, slots=True)
class EventsResponse:
    """An answer on ``bridge/response/events`` (docs/fleet.md)."""

    gateway: str
    id: str | None
    ok: bool
    events: tuple[EventRecord, ...]
    next_seq: int | None
    error: ResponseError | None


Record = (
    EventRecord
    | CommandResultRecord
    | PumpStateRecord
    | BridgeInfoRecord
    | BridgeStateRecord
    | EventsResponse
)


def classify(topic: str) -> tuple[Subject, str, str | None] | None:
    """``(subject, gateway, pump_id)`` of a contract topic, None for any other topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != TOPIC_ROOT or not is_topic_id(parts[1]):
        return None
    gateway, rest = parts[1], parts[2:]
    if rest[0] == "pump" and len(rest) >= 3 and is_topic_id(rest[1]):
        tail = "/".join(rest[2:])
        subject = {
            "event": Subject.EVENT,
            "state": Subject.PUMP_STATE,
            "command/result": Subject.COMMAND_RESULT,
        }.get(tail)
        return None if subject is None else (subject, gateway, rest[1])
    tail = "/".join(rest)
    for subject in (Subject.BRIDGE_INFO, Subject.BRIDGE_STATE, Subject.EVENTS_RESPONSE):
        if tail == subject.value:
            return subject, gateway, None
    return None


def _field(obj: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadMessage(f"{where}: field {key!r} must be a {kind.__name__}, got {value!r:.60}")
    return value


def _load(payload: bytes, where: str) -> JsonObject:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"{where}: payload is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"{where}: payload must be a JSON object")
    if b"\\u0000" in payload and _has_nul(obj):
        raise BadMessage(f"{where}: a string holds \\u0000, which PostgreSQL cannot store")
    return obj


def _has_nul(value: object) -> bool:
    """True when a string (or key) anywhere in ``value`` contains U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _envelope(
    obj: Mapping[str, object], kind: Kind, gateway: str, where: str
) -> tuple[str, int, datetime, JsonObject]:
    """``(session, seq, ts, data)`` of an envelope, checked against the topic's gateway."""
    if obj.get("schema") != kind.schema:
        raise BadMessage(f"{where}: field 'schema' must be {kind.schema!r}")
    if obj.get("gateway") != gateway:
        raise BadMessage(f"{where}: field 'gateway' {obj.get('gateway')!r:.70} != topic's")
    session = _field(obj, "session", str, where)
    if not session or len(session) > 128:
        raise BadMessage(f"{where}: field 'session' must be 1..128 characters")
    seq = _field(obj, "seq", int, where)
    if seq < 0 or seq >= 2**63:
        raise BadMessage(f"{where}: field 'seq' must be in 0..2^63-1, got {seq}")
    try:
        ts = parse_ts(_field(obj, "ts", str, where))
    except ValueError as exc:
        raise BadMessage(f"{where}: field 'ts': {exc}") from None
    return session, seq, ts, _field(obj, "data", dict, where)


def parse_event(
    obj: Mapping[str, object], gateway: str, pump_id: str | None, where: str
) -> EventRecord:
    """An event envelope (live, or one of a backfill page) as a record."""
    session, seq, ts, data = _envelope(obj, Kind.PUMP_EVENT, gateway, where)
    if seq < 1:
        raise BadMessage(f"{where}: field 'seq' of an event must be >= 1, got {seq}")
    if pump_id is None or not is_topic_id(pump_id):
        raise BadMessage(f"{where}: no valid pump id for event {seq}")
    return EventRecord(
        gateway, session, seq, ts, pump_id, _field(data, "type", str, where + " data"), data
    )


def _events_response(obj: Mapping[str, object], gateway: str, where: str) -> EventsResponse:
    """An ``infusiond.bridge.events.response/1`` envelope (daemon/mqtt/events_request.py)."""
    data = _envelope(obj, Kind.EVENTS_RESPONSE, gateway, where)[3]
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadMessage(f"{where}: field 'data.id' must be a string or null")
    status = data.get("status")
    if status not in {"ok", "error"}:
        raise BadMessage(f"{where}: field 'data.status' must be 'ok' or 'error'")
    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        raise BadMessage(f"{where}: field 'data.events' must be a list")
    events = []
    for i, item in enumerate(raw_events):
        if not isinstance(item, dict):
            raise BadMessage(f"{where}: data.events[{i}] must be an object")
        pump_id = item.get("pump_id")
        events.append(
            parse_event(item, gateway, pump_id if isinstance(pump_id, str) else None, where)
        )
    next_seq = data.get("next_seq")
    if next_seq is not None and (not isinstance(next_seq, int) or isinstance(next_seq, bool)):
        raise BadMessage(f"{where}: field 'data.next_seq' must be an integer")
    error = data.get("error")
    if error is not None and not isinstance(error, dict):
        raise BadMessage(f"{where}: field 'data.error' must be an object")
    refused = None if error is None else ResponseError.from_json(error, where)
    return EventsResponse(gateway, request_id, status == "ok", tuple(events), next_seq, refused)


def parse_message(topic: str, payload: bytes) -> Record:
    """The record a message on a contract topic carries; :class:`BadMessage` otherwise."""
    found = classify(topic)
    where = f"topic {topic[:200]!r}"
    if found is None:
        raise BadMessage(f"{where}: not a topic the collector stores")
    subject, gateway, pump_id = found
    obj = _load(payload, where)
    if subject is Subject.BRIDGE_STATE:
        state = obj.get("state")
        if state not in {"online", "offline"}:
            raise BadMessage(f"{where}: field 'state' must be 'online' or 'offline'")
        return BridgeStateRecord(gateway, str(state))
    if subject is Subject.EVENTS_RESPONSE:
        return _events_response(obj, gateway, where)
    if subject is Subject.EVENT:
        return parse_event(obj, gateway, pump_id, where)
    digest = hashlib.sha256(payload).digest()
    if subject is Subject.BRIDGE_INFO:
        session, seq, ts, data = _envelope(obj, Kind.BRIDGE_INFO, gateway, where)
        return BridgeInfoRecord(gateway, session, seq, ts, data)
    assert pump_id is not None  # classify gives pump topics a pump id
    if subject is Subject.PUMP_STATE:
        session, seq, ts, data = _envelope(obj, Kind.PUMP_STATE, gateway, where)
        return PumpStateRecord(gateway, session, seq, ts, pump_id, data, digest)
    session, seq, ts, data = _envelope(obj, Kind.PUMP_COMMAND_RESULT, gateway, where)
    command_id = data.get("id")
    phase = data.get("phase")
    if not isinstance(phase, str):
        raise BadMessage(f"{where}: field 'data.phase' must be a string")
    return CommandResultRecord(
        gateway,
        session,
        seq,
        ts,
        pump_id,
        command_id if isinstance(command_id, str) else None,
        phase,
        data,
        digest,
    )


@dataclass
class Batch:
    """Records collected since the last commit, stored together by :func:`store_batch`."""

    events: list[EventRecord] = field(default_factory=list)
    command_results: list[CommandResultRecord] = field(default_factory=list)
    pump_states: list[PumpStateRecord] = field(default_factory=list)
    infos: list[BridgeInfoRecord] = field(default_factory=list)
    bridge_states: list[BridgeStateRecord] = field(default_factory=list)

    def add(self, record: Record) -> None:
        """Take one parsed message: each kind to its list; a backfill answer's events to
        :attr:`events` (the answer itself is the caller's to act on)."""
        if isinstance(record, EventRecord):
            self.events.append(record)
        elif isinstance(record, CommandResultRecord):
            self.command_results.append(record)
        elif isinstance(record, PumpStateRecord):
            self.pump_states.append(record)
        elif isinstance(record, BridgeInfoRecord):
            self.infos.append(record)
        elif isinstance(record, BridgeStateRecord):
            self.bridge_states.append(record)
        else:
            self.events.extend(record.events)

    def __len__(self) -> int:
        return (
            len(self.events)
            + len(self.command_results)
            + len(self.pump_states)
            + len(self.infos)
            + len(self.bridge_states)
        )

    def describe(self) -> str:
        """What the batch holds, for logs (gateway, session and seq of its first record)."""
        for records in (self.events, self.command_results, self.pump_states, self.infos):
            if records:
                r = records[0]
                return f"{type(r).__name__} {r.gateway}/{r.session}/{r.seq} (+{len(self) - 1})"
        return f"{len(self)} bridge state(s)"

    def high_waters(self) -> dict[tuple[str, str], int]:
        """Per (gateway, session), the highest seq any record of the batch proves exists."""
        marks: dict[tuple[str, str], int] = {}
        seqs: Iterable[tuple[str, str, int]] = (
            *((r.gateway, r.session, r.seq) for r in self.events),
            *((r.gateway, r.session, r.seq) for r in self.command_results),
            *((r.gateway, r.session, r.seq) for r in self.pump_states),
            *((r.gateway, r.session, r.seq) for r in self.infos),
        )
        for gateway, session, seq in seqs:
            key = (gateway, session)
            marks[key] = max(marks.get(key, 0), seq)
        return marks
