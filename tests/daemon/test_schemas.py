"""docs/schemas: valid draft 2020-12 documents whose $id is the schema string, and every
payload our builders produce (results, events, envelopes) validates against them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from daemon.base.envelope import SCHEMA_IDS, Kind, encode, envelope
from daemon.base.events import (
    Alarm,
    AlarmRaised,
    ChangeSource,
    ConnectionChanged,
    DeliveryStarted,
    Priority,
    RateChanged,
    RatePoint,
)
from daemon.base.quantities import Quantity
from daemon.base.results import (
    CommandResult,
    ErrorBody,
    ErrorCode,
    FirstOutcome,
    Phase,
    Readback,
    VerdictJson,
)
from daemon.base.timefmt import parse_ts
from daemon.base.topics import Topics
from daemon.journal import AsyncJournal
from daemon.mqtt.command_parse import Command, Rejection, parse_command
from daemon.mqtt.event_messages import outbox_message
from drivers.base import ConnectionState

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
NOW = datetime(2026, 11, 26, 17, 30, 0, 250000, tzinfo=UTC)
VERDICT = {
    "verdict": "reject",
    "rate": {"value": 300.0, "unit": "mL/h"},
    "dose": {"value": 4.0, "unit": "ug/kg/min"},
    "findings": [
        {
            "rule": "HARD_MAX",
            "severity": "reject",
            "message": "4 ug/kg/min is above the hard maximum 3 ug/kg/min",
            "limit": {"value": 3.0, "unit": "ug/kg/min"},
        }
    ],
    "library": {"name": "vasopressors-example", "version": "2026.11.1", "sha256": "b" * 64},
}


def validator(schema_id: str) -> Draft202012Validator:
    doc = json.loads((SCHEMAS / (schema_id.replace("/", "-") + ".json")).read_text())
    return Draft202012Validator(doc)


def wrap(kind: Kind, data: dict[str, Any]) -> Any:
    """The envelope as a consumer sees it: encoded and decoded again."""
    body = envelope(kind, gateway="demo", session="9f1c2a7be04d5531", seq=7, ts=NOW, data=data)
    return json.loads(encode(body))


@pytest.mark.parametrize("schema_id", SCHEMA_IDS)
def test_each_schema_exists_is_valid_and_has_its_id(schema_id: str) -> None:
    """docs/schemas/<schema with / -> ->.json is draft 2020-12 and its $id is the schema."""
    path = SCHEMAS / (schema_id.replace("/", "-") + ".json")
    doc = json.loads(path.read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$id"] == schema_id
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for example in doc.get("examples", []):
        Draft202012Validator(doc).validate(example)


def test_no_stray_schema_files() -> None:
    """Every file in docs/schemas is one of the contract's schemas."""
    names = {p.name for p in SCHEMAS.glob("*.json")}
    assert names == {s.replace("/", "-") + ".json" for s in SCHEMA_IDS}


def test_every_result_builder_validates() -> None:
    """rejected/needs_confirmation/accepted/applied/failed/uncertain/duplicate results, in
    their envelope, validate against infusiond.pump.command.result/1."""
    v = validator("infusiond.pump.command.result/1")
    too_large = parse_command(b"x" * 20_000, now=NOW)
    assert isinstance(too_large, Rejection)
    verdict = VerdictJson(VERDICT)
    first = FirstOutcome(Phase.REJECTED, verdict)
    results = [
        CommandResult.rejected(None, error=too_large.error()),
        CommandResult.rejected("c-1", error=ErrorBody(ErrorCode.BUSY, "pump-1 is executing c-0")),
        CommandResult.rejected("c-1", verdict=verdict),
        CommandResult.needs_confirmation(
            "c-1",
            verdict=VerdictJson({**VERDICT, "verdict": "confirm"}),
            confirm_token="k3v9",
            expires_at=NOW,
        ),
        CommandResult.accepted("c-1"),
        CommandResult.accepted(
            "c-1", verdict=VerdictJson({**VERDICT, "verdict": "accept", "findings": []})
        ),
        CommandResult.applied("c-1", readback=Readback("infusing", Quantity.rate(63.0), None)),
        CommandResult.failed(
            "c-1", error=ErrorBody(ErrorCode.DEVICE_REJECTED, "out of device range")
        ),
        CommandResult.uncertain(
            "c-1", error=ErrorBody(ErrorCode.DEVICE_TIMEOUT, "no answer in 1.0 s")
        ),
        CommandResult.duplicate("c-1", first=first),
        CommandResult.duplicate("c-1", first=FirstOutcome(Phase.APPLIED)),
    ]
    for result in results:
        data = result.to_json()
        errors = [e.message for e in v.iter_errors(wrap(Kind.PUMP_COMMAND_RESULT, data))]
        assert errors == [], (result, errors)


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "c", "phase": "rejected"},  # neither error nor verdict
        {"id": "c", "phase": "rejected", "error": {"code": "oops", "message": "m"}},
        {"id": "c", "phase": "applied"},  # no readback
        {"id": "c", "phase": "duplicate"},  # no first
        {"id": None, "phase": "accepted"},  # only rejections may lack an id
        {"id": "c", "phase": "accepted", "first": {"phase": "accepted"}},
        {"id": "c", "phase": "exploded"},
    ],
)
def test_result_schema_refuses_malformed_results(bad: dict[str, Any]) -> None:
    """The result schema is strict enough to catch a wrong builder."""
    assert list(
        validator("infusiond.pump.command.result/1").iter_errors(
            wrap(Kind.PUMP_COMMAND_RESULT, bad)
        )
    )


@pytest.mark.asyncio
async def test_outbox_event_payloads_validate(tmp_path: Path) -> None:
    """The exact bytes the outbox publishes validate against infusiond.pump.event/1."""
    v = validator("infusiond.pump.event/1")
    point = {"rate": {"value": 52.5, "unit": "mL/h"}, "dose": {"value": 0.05, "unit": "ug/kg/min"}}
    typed = RatePoint(Quantity.rate(52.5), Quantity(0.05, "ug/kg/min"))
    events = [
        RateChanged(typed, typed, ChangeSource.COMMAND, "c-1"),
        RateChanged(typed, typed, ChangeSource.DEVICE),
        AlarmRaised(Alarm("occlusion", Priority.HIGH, parse_ts("2026-11-26T17:30:00.000Z"))),
        ConnectionChanged(ConnectionState.OFFLINE, ConnectionState.ONLINE),
        DeliveryStarted(Quantity.rate(52.5)),
    ]
    async with await AsyncJournal.open(tmp_path, gateway_id="demo") as journal:
        for data in events:
            item = await journal.record_event("pump-1", data, ts=NOW)
            _, payload = outbox_message(item, topics=Topics("demo"), session=journal.session)
            errors = [e.message for e in v.iter_errors(json.loads(payload))]
            assert errors == [], (data, errors)
    bad = wrap(Kind.PUMP_EVENT, {"type": "rate_changed", "from": point, "to": point})
    assert list(v.iter_errors(bad)), "rate_changed needs a command_id or source=device"


def test_envelope_refuses_extra_keys_and_bad_timestamps() -> None:
    """Envelopes are closed objects with millisecond Z timestamps."""
    v = validator("infusiond.pump.state/1")
    doc = json.loads((SCHEMAS / "infusiond.pump.state-1.json").read_text())
    good = wrap(Kind.PUMP_STATE, doc["examples"][0]["data"])
    assert list(v.iter_errors(good)) == []
    assert list(v.iter_errors({**good, "extra": 1}))
    assert list(v.iter_errors({**good, "ts": "2026-11-26T17:30:00Z"}))


# -- commands: what the parser accepts, the schema accepts ---------------------------------

COMMANDS: list[dict[str, Any]] = [
    {
        "id": "c-1",
        "issued_at": "2026-11-26T17:29:55.000Z",
        "by": {"clinician": "dr-a"},
        "action": "set_rate",
        "rate": {"value": 63.0, "unit": "mL/h"},
    },
    {
        "schema": "infusiond.pump.command/1",
        "id": "c-2",
        "issued_at": "2026-11-26T18:29:55+01:00",
        "ttl_s": 10.5,
        "by": {"clinician": "dr-a"},
        "action": "program",
        "program": {
            "drug": "norepinephrine",
            "concentration": {"value": 4, "unit": "ug/mL"},
            "diluent": "D5W",
            "route": "peripheral",
            "profile": "adult-icu",
            "dose": {"value": 0.02, "unit": "ug/kg/min"},
        },
    },
    {"id": "c-3", "issued_at": "2026-11-26T17:29:55Z", "by": {"clinician": "x"}, "action": "stop"},
]


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_the_parser_accepts_validate(command: dict[str, Any]) -> None:
    """Commands parse_command accepts are valid infusiond.pump.command/1 documents."""
    assert isinstance(parse_command(json.dumps(command).encode(), now=NOW), Command)
    assert list(validator("infusiond.pump.command/1").iter_errors(command)) == []


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, len(COMMANDS) - 1),
    key=st.sampled_from(["action", "dose", "rate", "program", "ttl_s", "by", "id", "confirm"]),
    value=st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-1, 10)
    | st.sampled_from(["set_dose", "start", "", "x" * 70])
    | st.fixed_dictionaries({"value": st.floats(-1, 2), "unit": st.sampled_from(["mL/h", ""])}),
)
def test_parser_and_schema_agree_on_mutated_commands(index: int, key: str, value: Any) -> None:
    """The published schema and parse_command accept exactly the same mutated commands
    (issued_at stays valid and fresh here: expiry is the one check a schema cannot express)."""
    command = {**COMMANDS[index], key: value}
    if value is None:
        del command[key]
    parsed = parse_command(json.dumps(command).encode(), now=NOW)
    schema_ok = not list(validator("infusiond.pump.command/1").iter_errors(command))
    if isinstance(parsed, Rejection) and parsed.code is ErrorCode.EXPIRED:
        assert schema_ok  # a short ttl_s is well-formed; it is time that rejects it
        return
    assert isinstance(parsed, Command) == schema_ok, parsed
