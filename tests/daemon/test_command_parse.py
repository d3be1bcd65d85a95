"""Command parsing: every documented error code, field-naming messages, and no input
that makes the parser raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.base.envelope import encode
from daemon.base.results import CommandResult, ErrorCode
from daemon.mqtt.command_parse import (
    MAX_COMMAND_BYTES,
    Command,
    CommandAction,
    Rejection,
    parse_command,
)

NOW = datetime(2026, 11, 26, 17, 30, 0, tzinfo=UTC)


def cmd(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "c-1",
        "issued_at": "2026-11-26T17:29:50.000Z",
        "ttl_s": 30,
        "by": {"clinician": "dr-a"},
        "action": "set_dose",
        "dose": {"value": 0.06, "unit": "ug/kg/min"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def parse(obj: Any, *, retained: bool = False, now: datetime = NOW) -> Command | Rejection:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse_command(raw, now=now, retained=retained)


def rejection(obj: Any, **kw: Any) -> Rejection:
    result = parse(obj, **kw)
    assert isinstance(result, Rejection), result
    return result


def test_a_valid_command_parses_with_aware_utc_time() -> None:
    """A well-formed set_dose becomes a Command; issued_at is UTC-aware; expiry is computed."""
    command = parse(cmd(schema="infusiond.pump.command/1"))
    assert isinstance(command, Command)
    assert command.dose is not None
    assert command.dose.value == 0.06
    assert command.issued_at == datetime(2026, 11, 26, 17, 29, 50, tzinfo=UTC)
    assert command.expires_at == command.issued_at + timedelta(seconds=30)
    assert command.to_json()["issued_at"] == "2026-11-26T17:29:50.000Z"
    assert command.to_json()["schema"] == "infusiond.pump.command/1"


def test_every_action_with_its_fields_parses() -> None:
    """set_rate, start/stop/pause, program and a confirmation resend are all accepted shapes."""
    program = {
        "drug": "norepinephrine",
        "concentration": {"value": 4, "unit": "ug/mL"},
        "diluent": "D5W",
        "route": "central",
        "profile": "adult-icu",
        "weight_kg": 70,
        "dose": {"value": 0.05, "unit": "ug/kg/min"},
        "vtbi": {"value": 250, "unit": "mL"},
    }
    shapes = [
        cmd(action="set_rate", dose=None, rate={"value": 63.0, "unit": "mL/h"}),
        cmd(action="start", dose=None),
        cmd(action="stop", dose=None),
        cmd(action="pause", dose=None),
        cmd(action="program", dose=None, program=program),
        cmd(confirm={"token": "t0k", "reason": "MAP 58 despite fluids"}),
    ]
    for shape in shapes:
        assert isinstance(parse(shape), Command), shape


def test_too_large_is_checked_before_parsing_and_has_no_id() -> None:
    """A payload over 16 KiB is too_large with id null, even when it is valid JSON with an id."""
    big = json.dumps(cmd(pad="x" * MAX_COMMAND_BYTES)).encode()
    r = rejection(big)
    assert r.code is ErrorCode.TOO_LARGE
    assert r.id is None
    assert str(MAX_COMMAND_BYTES) in r.message
    assert rejection(b"\xff" * (MAX_COMMAND_BYTES + 1)).code is ErrorCode.TOO_LARGE
    assert parse_command(b" " * MAX_COMMAND_BYTES, now=NOW).code is ErrorCode.BAD_JSON  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"id": "c-1",', "not JSON"),
        (b"{'id': 'c-1'}", "not JSON"),
    ],
)
def test_unreadable_payload_is_bad_json_with_null_id(raw: bytes, needle: str) -> None:
    """Non-UTF-8, truncated or non-JSON payloads answer bad_json with id null."""
    r = rejection(raw)
    assert r.code is ErrorCode.BAD_JSON
    assert r.id is None
    assert needle in r.message


@pytest.mark.parametrize(
    ("obj", "field", "text"),
    [
        (cmd(id=None), "id", "required"),
        (cmd(issued_at=None), "issued_at", "required"),
        (cmd(by=None), "by", "required"),
        (cmd(action="explode"), "action", "Input should be"),
        (cmd(dose={"value": -0.01, "unit": "ug/kg/min"}), "dose.value", "greater than or equal"),
        (cmd(dose={"value": 1e12, "unit": "ug/kg/min"}), "dose.value", "less than or equal"),
        (cmd(dose={"value": "0.06", "unit": "ug/kg/min"}), "dose.value", "valid number"),
        (cmd(dose={"value": True, "unit": "ug/kg/min"}), "dose.value", "valid number"),
        (cmd(dose={"value": 0.06}), "dose.unit", "required"),
        (cmd(ttl_s=0), "ttl_s", "greater than 0"),
        (cmd(ttl_s=10**6), "ttl_s", "less than or equal"),
        (cmd(id="x" * 65), "id", "at most 64"),
        (cmd(id=17), "id", "valid string"),
        (cmd(issued_at="2026-11-26T17:29:50"), "issued_at", "with a zone"),
        (cmd(issued_at=1764178190), "issued_at", "RFC 3339"),
        (cmd(surprise=1), "surprise", "unknown field"),
        (cmd(by={"clinician": "dr-a", "role": "x"}), "by.role", "unknown field"),
        (cmd(schema="infusiond.pump.command/2"), "schema", "Input should be"),
        (cmd(schema_="infusiond.pump.command/1"), "schema_", "unknown field"),
        (cmd(action="set_rate", dose=None), "rate", "required for action set_rate"),
        (cmd(action="stop"), "dose", "not allowed for action stop"),
        (cmd(program={"drug": "x"}), "program.concentration", "required"),
        (cmd(confirm={"token": "t"}), "confirm.reason", "required"),
    ],
)
def test_schema_violations_are_bad_request_naming_the_field(
    obj: dict[str, Any], field: str, text: str
) -> None:
    """Wrong type, range, missing or unknown field: bad_request whose message names it."""
    r = rejection(obj)
    assert r.code is ErrorCode.BAD_REQUEST
    assert r.message.startswith(f"{field}:"), r.message
    assert text in r.message


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (json.dumps(cmd()).replace("0.06", "NaN"), "dose.value"),
        (json.dumps(cmd()).replace("0.06", "Infinity"), "dose.value"),
        (json.dumps(cmd()).replace("0.06", "-Infinity"), "dose.value"),
        (json.dumps(cmd()).replace("0.06", "1e400"), "dose.value"),
        (json.dumps(cmd()).replace("0.06", "1" + "0" * 400), "dose.value"),
        ('{"id": "a", "id": "b"}', "id"),
        ("[1, 2]", "command"),
        ('"just a string"', "command"),
        ("[" * 5000 + "]" * 5000, "command"),
        ('{"a":' * 2500 + "1" + "}" * 2500, "command"),
        (json.dumps(cmd(by={"clinician": {"a": {"b": {"c": 1}}}})), "by.clinician.a.b"),
    ],
)
def test_nan_infinity_huge_duplicates_and_nesting_bombs_are_bad_request(
    raw: str, field: str
) -> None:
    """NaN/Infinity/overflowing numbers, duplicate keys, non-objects and bombs: bad_request."""
    r = rejection(raw.encode())
    assert r.code is ErrorCode.BAD_REQUEST
    assert r.message.startswith(f"{field}:"), r.message


def test_bad_request_carries_the_id_when_readable() -> None:
    """A schema error still answers with the command's id so the sender can match it."""
    assert rejection(cmd(ttl_s=-1)).id == "c-1"


def test_expired_when_issued_at_plus_ttl_is_past() -> None:
    """issued_at + ttl_s before now -> expired; exactly at the boundary is still valid."""
    r = rejection(cmd(issued_at="2026-11-26T17:29:00.000Z", ttl_s=30))
    assert r.code is ErrorCode.EXPIRED
    assert r.id == "c-1"
    assert "30.0 s ago" in r.message
    edge = cmd(issued_at="2026-11-26T17:29:30.000Z", ttl_s=30)
    assert isinstance(parse(edge), Command)


def test_issued_in_the_future_beyond_skew_is_bad_request() -> None:
    """A command from more than 10 s in the future means a wrong clock: bad_request issued_at."""
    assert isinstance(parse(cmd(issued_at="2026-11-26T17:30:09.000Z")), Command)
    r = rejection(cmd(issued_at="2026-11-26T17:31:00.000Z"))
    assert r.code is ErrorCode.BAD_REQUEST
    assert r.message.startswith("issued_at:")
    assert "in the future" in r.message


def test_retained_commands_are_never_executed() -> None:
    """A valid command that arrives retained is rejected 'retained', id kept when readable."""
    r = rejection(cmd(), retained=True)
    assert r.code is ErrorCode.RETAINED
    assert r.id == "c-1"
    assert rejection(b"garbage", retained=True).code is ErrorCode.RETAINED


def test_offsets_are_normalised_to_utc() -> None:
    """An issued_at with an offset is converted to UTC before expiry is computed."""
    command = parse(cmd(issued_at="2026-11-26T18:29:50.000+01:00"))
    assert isinstance(command, Command)
    assert command.issued_at == datetime(2026, 11, 26, 17, 29, 50, tzinfo=UTC)


# -- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["id", "issued_at", "ttl_s", "by", "action", "dose", "rate", "x"])
            | st.text(max_size=10),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=MAX_COMMAND_BYTES + 64), retained=st.booleans())
def test_arbitrary_bytes_never_raise(raw: bytes, retained: bool) -> None:
    """Any bytes give a Command or a Rejection with a contract error code; nothing raises."""
    result = parse_command(raw, now=NOW, retained=retained)
    if isinstance(result, Rejection):
        assert result.code in ErrorCode
        assert result.message
        if retained:
            assert result.code in {ErrorCode.RETAINED, ErrorCode.TOO_LARGE}


@settings(max_examples=300, deadline=None)
@given(obj=json_values)
def test_arbitrary_json_never_raises(obj: Any) -> None:
    """Any JSON value (NaN and Infinity included) gives a Command or a Rejection."""
    raw = json.dumps(obj).encode()
    result = parse_command(raw, now=NOW)
    assert isinstance(result, Command | Rejection)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["id", "issued_at", "ttl_s", "by", "action", "dose"]),
    value=json_values,
)
def test_mutating_one_field_is_either_valid_or_names_a_field(field: str, value: Any) -> None:
    """Replacing one field by any JSON value never raises; a bad_request names some field."""
    obj = cmd()
    obj[field] = value
    result = parse_command(json.dumps(obj).encode(), now=NOW)
    if isinstance(result, Rejection):
        assert result.code in {ErrorCode.BAD_REQUEST, ErrorCode.EXPIRED}
        if result.code is ErrorCode.BAD_REQUEST:
            assert ":" in result.message


LONE = "\ud800"  # a lone surrogate: valid in a JSON \u escape, impossible to encode as UTF-8

PROGRAM = {
    "drug": "norepinephrine",
    "concentration": {"value": 4, "unit": "ug/mL"},
    "diluent": "D5W",
    "route": "central",
    "profile": "adult-icu",
    "dose": {"value": 0.05, "unit": "ug/kg/min"},
}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (cmd(id=LONE), "id"),
        (cmd(id=f"c-{LONE}-2"), "id"),
        (cmd(by={"clinician": LONE}), "by.clinician"),
        (cmd(confirm={"token": "t", "reason": f"bp {LONE}"}), "confirm.reason"),
        (cmd(confirm={"token": LONE, "reason": "r"}), "confirm.token"),
        (cmd(dose={"value": 0.06, "unit": LONE}), "dose.unit"),
        (cmd(action=LONE), "action"),
        (cmd(issued_at=LONE), "issued_at"),
        (cmd(schema=LONE), "schema"),
        (cmd(action="program", dose=None, program={**PROGRAM, "drug": LONE}), "program.drug"),
        (cmd(sig={"kid": LONE, "hmac": "0" * 64}), "sig.kid"),
        (cmd(by={"clinician": "dr-a", LONE: "x"}), f"by.{LONE}"),
    ],
)
def test_a_string_that_cannot_be_utf8_is_bad_request_naming_the_field(
    obj: dict[str, Any], field: str
) -> None:
    """Regression: a lone surrogate (``"\\ud800"``) in the id, the clinician, the reason or any
    other string or key is bad_request naming that field; the answer (id and message) is
    encodable, so it can be journaled and published."""
    r = rejection(obj)
    assert r.code is ErrorCode.BAD_REQUEST
    shown = field.encode("utf-8", "backslashreplace").decode()
    assert r.message.startswith(f"{shown}:"), r.message
    assert "lone surrogate" in r.message
    assert r.id == (None if field == "id" else "c-1")
    encode(
        CommandResult.rejected(r.id, error=r.error()).to_json()
    )  # what the journal and the bridge do: must not raise


def test_keys_quoted_in_messages_are_escaped_and_shortened() -> None:
    """A duplicate or unknown key with a lone surrogate or 5,000 characters is quoted escaped
    and cut to 64 characters, so a message never carries unencodable or unbounded input."""
    dup = rejection(f'{{"{"k" * 5000}": 1, "{"k" * 5000}": 2}}'.encode())
    assert dup.message == "k" * 63 + "\u2026: duplicate key"
    lone_dup = rejection(b'{"\\ud800": 1, "\\ud800": 2}')
    assert lone_dup.message == "\\ud800: duplicate key"
    unknown = rejection(cmd(**{"z" * 5000: 1}))
    assert unknown.message.startswith("z" * 63 + "\u2026:")
    assert "unknown field" in unknown.message


text_with_surrogates = st.text(st.characters(codec=None, categories=["L", "N", "Cs"]), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["id", "action", "ttl_s", "by", "dose", "confirm"]),
    value=st.recursive(
        st.none() | text_with_surrogates | st.integers(),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(text_with_surrogates, children, max_size=3)
        ),
        max_leaves=8,
    ),
)
def test_any_rejection_can_be_encoded_even_with_surrogates(field: str, value: Any) -> None:
    """Whatever strings (surrogates included) a field holds, the parse result's answer
    encodes as UTF-8 JSON: nothing can stop a refusal from being journaled and published."""
    obj = cmd()
    obj[field] = value
    result = parse_command(json.dumps(obj).encode(), now=NOW)
    if isinstance(result, Rejection):
        encode(CommandResult.rejected(result.id, error=result.error()).to_json())
    else:
        encode(result.to_json())


_ACTION_FIELDS: dict[CommandAction, dict[str, Any]] = {
    CommandAction.SET_DOSE: {},
    CommandAction.SET_RATE: {"dose": None, "rate": {"value": 5.0, "unit": "mL/h"}},
    CommandAction.PROGRAM: {"dose": None, "program": PROGRAM},
}


@given(st.sampled_from(CommandAction))
def test_a_parsed_command_carries_its_action_as_the_enum(action: CommandAction) -> None:
    """The action is an enum inside, and journaled as the very string received."""
    fields = _ACTION_FIELDS.get(action, {"dose": None})
    parsed = parse(cmd(action=action.value, **fields))
    assert isinstance(parsed, Command)
    assert parsed.action is action
    assert parsed.to_json()["action"] == action.value


@pytest.mark.parametrize("action", ["STOP", "stop ", "explode", 1])
def test_an_unknown_action_is_refused_naming_every_action(action: object) -> None:
    """Nothing is coerced into an action; the message lists them, as the contract's Literal did."""
    assert rejection(cmd(action=action, dose=None)).message == (
        "action: Input should be 'set_dose', 'set_rate', 'start', 'stop', 'pause' or 'program'"
    )
