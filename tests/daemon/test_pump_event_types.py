"""Typed pump events (daemon/base/events.py, ProgramChanged in daemon/core/program.py): every
type's JSON validates against infusiond.pump.event/1 inside its envelope, reads back to the same
value after the journal's encoding, and a malformed journaled event names the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.errors import PayloadError
from daemon.base.events import (
    Alarm,
    AlarmCleared,
    AlarmRaised,
    ChangeSource,
    CommandRejected,
    ConnectionChanged,
    DeliveryStarted,
    DeliveryStopped,
    LibraryChanged,
    OutOfLibraryObserved,
    OverrideAccepted,
    Priority,
    PumpEvent,
    RateChanged,
    RatePoint,
    Via,
    VolumeCleared,
    read_event,
)
from daemon.base.quantities import Quantity
from daemon.base.timefmt import at_ms
from daemon.core.program import Program, ProgramChanged
from daemon.core.pump_events import PUMP_EVENT_READERS, event_from_json
from daemon.journal import JournalKind
from daemon.journal.store import Journal
from drivers.base import ConnectionState, RunState
from protocol.verdict import LibraryIdentity
from tests.support.events import RawEvent

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/schemas/infusiond.pump.event-1.json").read_text()
)
VALIDATOR = Draft202012Validator(SCHEMA)
NOW = datetime(2026, 11, 26, 17, 30, 0, 250000, tzinfo=UTC)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True)
words = st.text(min_size=1, max_size=24)
numbers = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
rates = numbers.map(Quantity.rate)
volumes = numbers.map(Quantity.volume)
doses = st.builds(
    Quantity,
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(["ug/kg/min", "mg/h", "[USP'U]/min"]),
)
points = st.builds(RatePoint, rates | st.none(), doses | st.none())
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(at_ms)
alarm_codes = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
alarms = st.builds(Alarm, alarm_codes, st.sampled_from(Priority), instants, words | st.none())
finding = st.fixed_dictionaries(
    {
        "rule": st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True),
        "severity": st.sampled_from(["info", "advisory", "confirm", "reject"]),
        "message": words,
    },
    optional={"limit": st.builds(lambda q: q.to_json(), doses), "observed": numbers},
)
libraries = st.builds(LibraryIdentity, words, words, st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
verdicts = st.fixed_dictionaries(
    {
        "verdict": st.sampled_from(["accept", "confirm", "reject"]),
        "findings": st.lists(finding, max_size=3),
    },
    optional={
        "rate": st.builds(lambda q: q.to_json(), rates) | st.none(),
        "dose": st.builds(lambda q: q.to_json(), doses) | st.none(),
        "library": st.builds(lambda lib: lib.to_dict(), libraries),
    },
)
decimals = numbers.map(lambda f: Decimal(str(f)))
programs = st.builds(
    Program,
    drug=words,
    concentration=decimals,
    concentration_unit=st.sampled_from(["mg/mL", "ug/mL", "[USP'U]/mL"]),
    dose_unit=st.sampled_from(["ug/kg/min", "mg/h"]),
    diluent=words,
    route=words,
    profile=words,
    weight_kg=decimals | st.none(),
    line_shares=st.lists(words, max_size=3).map(tuple),
    bed=words | st.none(),
    baseline_sbp=st.integers(50, 250).map(Decimal) | st.none(),
    chronic_hypertension=st.booleans(),
)
command_ids = st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True)
# rate_changed: a command's change carries its id, a device's carries none (the schema's oneOf)
rate_changes = st.one_of(
    st.builds(
        RateChanged,
        points,
        points,
        st.just(ChangeSource.COMMAND),
        command_ids,
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        RateChanged,
        points,
        points,
        st.just(ChangeSource.DEVICE),
        st.none(),
        st.just(False),
        st.booleans(),
    ),
)

EVENTS: dict[str, st.SearchStrategy[PumpEvent]] = {
    "delivery_started": st.builds(DeliveryStarted, rates),
    "delivery_stopped": st.builds(DeliveryStopped, st.sampled_from(RunState)),
    "rate_changed": rate_changes,
    "program_changed": st.builds(ProgramChanged, command_ids, programs),
    "alarm_raised": st.builds(AlarmRaised, alarms),
    "alarm_cleared": st.builds(AlarmCleared, alarms),
    "connection_changed": st.builds(
        ConnectionChanged,
        st.sampled_from(ConnectionState),
        st.sampled_from(ConnectionState),
        words | st.none(),
        rates | st.none(),
    ),
    "out_of_library_observed": st.builds(
        OutOfLibraryObserved, rates, doses | st.none(), points, verdicts
    ),
    "command_rejected": st.builds(CommandRejected, command_ids, verdicts),
    "override_accepted": st.builds(
        OverrideAccepted, command_ids, words, words, st.lists(finding, max_size=3).map(tuple)
    ),
    "volume_cleared": st.builds(VolumeCleared, volumes),
    "library_changed": st.builds(
        LibraryChanged,
        libraries,
        libraries,
        st.sampled_from(Via),
        words | st.none(),
        st.from_regex(r"[0-9a-f]{16}", fullmatch=True) | st.none(),
        words | st.none(),
        words | st.none(),
    ),
}


def test_every_event_type_of_the_schema_has_a_class_and_a_reader() -> None:
    """The schema's type enum, the readers and the strategies below name the same types."""
    published = set(SCHEMA["$defs"]["data"]["properties"]["type"]["enum"])
    assert set(PUMP_EVENT_READERS) == published
    assert set(EVENTS) == published


@pytest.mark.parametrize("kind", sorted(EVENTS))
@given(data=st.data())
def test_each_event_validates_and_reads_back_after_journal_encoding(
    kind: str, data: st.DataObject
) -> None:
    """to_json (with the pump id the hub adds) inside the pump.event envelope validates; the
    journal's bytes read back (``event_from_json``) to the same value."""
    event = data.draw(EVENTS[kind])
    journaled = event.journaled("pump-1")
    assert journaled["type"] == kind == event.TYPE
    body = envelope(Kind.PUMP_EVENT, gateway="gw", session="s1", seq=1, ts=NOW, data=journaled)
    decoded = json.loads(encode(body))
    errors = [error.message for error in VALIDATOR.iter_errors(decoded)]
    assert errors == [], errors
    assert event_from_json(decoded["data"]) == event


def test_to_json_is_the_data_dict_published_before() -> None:
    """Spot check of exact dicts, as the daemon built them before events were typed."""
    dose = Quantity(0.05, "ug/kg/min")
    change = RateChanged(
        RatePoint(Quantity.rate(Decimal("52.5")), dose),
        RatePoint(Quantity.rate(63), None),
        ChangeSource.COMMAND,
        "c-1",
        reconciled=True,
    )
    assert change.to_json() == {
        "type": "rate_changed",
        "from": {"rate": {"value": 52.5, "unit": "mL/h"}, "dose": dose.to_json()},
        "to": {"rate": {"value": 63.0, "unit": "mL/h"}, "dose": None},
        "source": "command",
        "command_id": "c-1",
        "reconciled": True,
    }
    raised = AlarmRaised(Alarm("comm_lost", Priority.HIGH, NOW, "no answer"))
    assert raised.journaled("pump-2") == {
        "type": "alarm_raised",
        "alarm": {
            "code": "comm_lost",
            "priority": "high",
            "since": "2026-11-26T17:30:00.250Z",
            "message": "no answer",
        },
        "pump_id": "pump-2",
    }
    offline = ConnectionChanged(ConnectionState.OFFLINE, ConnectionState.ONLINE, "timeout")
    assert offline.to_json() == {
        "type": "connection_changed",
        "connection": "offline",
        "previous": "online",
        "reason": "timeout",
    }


GOOD_POINT = {"rate": {"value": 1.0, "unit": "mL/h"}, "dose": None}
GOOD_PROGRAM = {
    "drug": "norepinephrine",
    "concentration": {"value": 0.064, "unit": "mg/mL"},
    "dose_unit": "ug/kg/min",
    "diluent": "D5W",
    "route": "IV",
    "profile": "adult-icu",
    "weight_kg": 70.0,
}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "x"}, "event.type"),
        ({"source": "device"}, "event.type"),
        (
            {
                "type": "rate_changed",
                "from": GOOD_POINT,
                "to": {"rate": {"value": "63", "unit": "mL/h"}},
                "source": "device",
            },
            "event.to.rate.value",
        ),
        ({"type": "rate_changed", "from": GOOD_POINT, "to": GOOD_POINT}, "event.source"),
        (
            {"type": "alarm_raised", "alarm": {"code": "x", "priority": "urgent", "since": "x"}},
            "event.alarm.priority",
        ),
        (
            {"type": "alarm_cleared", "alarm": {"code": "x", "priority": "low", "since": "noon"}},
            "event.alarm.since",
        ),
        (
            {"type": "connection_changed", "connection": "up", "previous": "online"},
            "event.connection",
        ),
        ({"type": "delivery_stopped"}, "event.status"),
        (
            {"type": "program_changed", "command_id": "c-1", "program": {"drug": "x"}},
            "event.program.concentration",
        ),
        (
            {
                "type": "program_changed",
                "command_id": "c-1",
                "program": {**GOOD_PROGRAM, "weight_kg": "heavy"},
            },
            "event.program.weight_kg",
        ),
        (
            {
                "type": "library_changed",
                "from": {"name": "a", "version": "1", "sha256": "0" * 64},
                "to": {"name": "a", "version": "2"},
                "via": "mqtt",
            },
            "event.to.sha256",
        ),
        (
            {"type": "override_accepted", "command_id": "c", "clinician": "dr", "findings": []},
            "event.reason",
        ),
    ],
)
def test_a_malformed_journaled_event_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=field.replace(".", r"\.")):
        event_from_json(data)


def test_program_changed_is_read_in_core_only() -> None:
    """base/ cannot know Program: its reader refuses the type; core's reads it."""
    data = ProgramChanged("c-1", Program("d", Decimal(1), "mg/mL", "mg/h", "NS", "IV", "p"))
    with pytest.raises(PayloadError, match=r"event\.type"):
        read_event(data.to_json())
    assert event_from_json(data.to_json()) == data


def test_a_tampered_event_row_in_the_journal_fails_naming_the_field(tmp_path: Path) -> None:
    """What a reader of the journal sees when an event row does not describe its event."""
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        with journal.transaction():
            journal.record_event("pump-1", DeliveryStarted(Quantity.rate(5)), ts=NOW)
            journal.record_event(
                "pump-1", RawEvent({"type": "delivery_started", "pump_id": "pump-1"}), ts=NOW
            )
        good, bad = journal.rows(kinds=[JournalKind.EVENT])
    finally:
        journal.close()
    assert event_from_json(good.payload["event"]) == DeliveryStarted(Quantity.rate(5))
    with pytest.raises(PayloadError, match=r"event\.rate: missing"):
        event_from_json(bad.payload["event"])
