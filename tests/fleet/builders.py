"""Envelopes as gateways publish them, for fleet tests (real bytes through the real parser)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.base.envelope import Kind, encode, envelope
from daemon.fleet.records import (
    CommandResultRecord,
    EventRecord,
    PumpStateRecord,
    parse_message,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def event_payload(gateway: str, session: str, seq: int, pump: str = "pump-1") -> bytes:
    data: dict[str, Any] = {"type": "rate_changed", "to": {"rate": {"value": seq, "unit": "mL/h"}}}
    return encode(
        envelope(
            Kind.PUMP_EVENT,
            gateway=gateway,
            session=session,
            seq=seq,
            ts=T0 + timedelta(seconds=seq),
            data=data,
        )
    )


def event(gateway: str, session: str, seq: int, pump: str = "pump-1") -> EventRecord:
    topic = f"infusiond/{gateway}/pump/{pump}/event"
    record = parse_message(topic, event_payload(gateway, session, seq, pump))
    assert isinstance(record, EventRecord)
    return record


def state(
    gateway: str, session: str, seq: int, pump: str = "pump-1", alarms: int = 0
) -> PumpStateRecord:
    data = {
        "connection": "online",
        "alarms": [{"code": f"A{i}", "priority": "high", "since": "x"} for i in range(alarms)],
    }
    payload = encode(
        envelope(
            Kind.PUMP_STATE,
            gateway=gateway,
            session=session,
            seq=seq,
            ts=T0 + timedelta(seconds=seq, milliseconds=500),
            data=data,
        )
    )
    record = parse_message(f"infusiond/{gateway}/pump/{pump}/state", payload)
    assert isinstance(record, PumpStateRecord)
    return record


def result(
    gateway: str, session: str, seq: int, command_id: str, phase: str
) -> CommandResultRecord:
    payload = encode(
        envelope(
            Kind.PUMP_COMMAND_RESULT,
            gateway=gateway,
            session=session,
            seq=seq,
            ts=T0 + timedelta(seconds=seq, milliseconds=700),
            data={"id": command_id, "phase": phase},
        )
    )
    record = parse_message(f"infusiond/{gateway}/pump/pump-1/command/result", payload)
    assert isinstance(record, CommandResultRecord)
    return record
