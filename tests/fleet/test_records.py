"""What the collector accepts from MQTT: contract envelopes only, checked against the topic."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.cli import main
from daemon.fleet.records import (
    BadMessage,
    BridgeStateRecord,
    EventRecord,
    classify,
    parse_message,
)
from tests.fleet.builders import event_payload

TOPIC = "infusiond/gw-a/pump/pump-1/event"


def test_an_event_envelope_becomes_a_record_keyed_by_gateway_session_seq() -> None:
    record = parse_message(TOPIC, event_payload("gw-a", "s1", 7))
    assert isinstance(record, EventRecord)
    assert (record.gateway, record.session, record.seq, record.pump_id) == (
        "gw-a",
        "s1",
        7,
        "pump-1",
    )
    assert record.type == "rate_changed"


def test_bridge_state_has_no_envelope() -> None:
    record = parse_message("infusiond/gw-a/bridge/state", b'{"state":"offline"}')
    assert record == BridgeStateRecord("gw-a", "offline")


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        (TOPIC, event_payload("gw-b", "s1", 7), "'gateway'"),
        (TOPIC, b"{", "not JSON"),
        (TOPIC, b"[]", "JSON object"),
        (TOPIC, event_payload("gw-a", "s1", 0), "'seq'"),
        ("infusiond/gw-a/pump/pump-1/state", event_payload("gw-a", "s1", 7), "'schema'"),
        ("infusiond/gw-a/bridge/state", b'{"state":"maybe"}', "'state'"),
        ("infusiond/gw-a/pump/pump-1/command", b"{}", "not a topic"),
        ("elsewhere/gw-a/pump/pump-1/event", b"{}", "not a topic"),
    ],
)
def test_a_bad_message_is_refused_naming_the_field(topic: str, payload: bytes, field: str) -> None:
    with pytest.raises(BadMessage, match=field):
        parse_message(topic, payload)


def test_a_string_postgresql_cannot_store_is_refused_before_the_store() -> None:
    body = json.loads(event_payload("gw-a", "s1", 3))
    body["data"]["note"] = "a\x00b"
    with pytest.raises(BadMessage, match="u0000"):
        parse_message(TOPIC, json.dumps(body).encode())


def test_a_bad_timestamp_or_session_is_refused() -> None:
    body = json.loads(event_payload("gw-a", "s1", 3))
    with pytest.raises(BadMessage, match="'ts'"):
        parse_message(TOPIC, json.dumps({**body, "ts": "yesterday"}).encode())
    with pytest.raises(BadMessage, match="'session'"):
        parse_message(TOPIC, json.dumps({**body, "session": ""}).encode())


@given(st.text(max_size=80), st.binary(max_size=200))
def test_anything_else_is_a_bad_message_never_a_crash(topic: str, payload: bytes) -> None:
    with contextlib.suppress(BadMessage):
        parse_message(topic, payload)


def test_only_contract_topics_are_classified() -> None:
    assert classify("infusiond/gw-a/bridge/response/events") is not None
    assert classify("infusiond/gw-a/bridge/request/events") is None
    assert classify("infusiond/+/pump/x/event") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--broker", "http://h", "--postgres", "host=/x"], "--broker 'http://h': scheme"),
        (["--broker", "mqtt://h", "--postgres", "x", "--group", "a/b"], "--group 'a/b'"),
        (["--broker", "mqtt://h", "--postgres", "x", "--client-id", "a b"], "--client-id"),
        (["--broker", "mqtt://h", "--postgres", "x", "--batch", "0"], "--batch 0"),
        (
            ["--broker", "mqtt://h", "--postgres", "host=/nonexistent port=1"],
            "--postgres: cannot connect",
        ),
        (["--broker", "mqtt://h", "--postgres", "port=x = ="], "--postgres: not a valid"),
    ],
)
def test_fleet_collect_refuses_bad_options_naming_them(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "collect", *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_broker_password_without_a_user_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFUSIOND_FLEET_MQTT_PASSWORD", "secret")
    assert main(["fleet", "collect", "--broker", "mqtt://h", "--postgres", "x"]) == 1
    err = capsys.readouterr().err
    assert "--username" in err
    assert "secret" not in err
