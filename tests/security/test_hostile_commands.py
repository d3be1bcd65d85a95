"""Hostile and malformed MQTT commands against a real gateway, a real mosquitto and a real
Modbus simulator: every one is answered with its specific error code (naming the field) and
nothing reaches the pump (the simulator counts zero writes, its rate is unchanged)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.journal import JournalKind
from tests.reliability.harness import (
    NE_RATE,
    NE_RATE_UP,
    ROOT,
    Probe,
    bedside,
    command,
    probe,
    running_gateway,
    simulators,
)
from tests.support.procs import Mosquitto


def _raw(body: dict[str, Any], **replace: str) -> bytes:
    """JSON text with some values replaced by raw tokens json.dumps would not write."""
    text = json.dumps(body)
    for marker, token in replace.items():
        text = text.replace(json.dumps(marker), token)
    return text.encode()


def _cases() -> list[tuple[str, bytes | dict[str, Any], str, str]]:
    """(name, payload, expected error.code, text the message must contain)."""
    rate = command()
    return [
        (
            "nan",
            _raw(command(rate={"value": "@v", "unit": "mL/h"}), **{"@v": "NaN"}),
            "bad_request",
            "rate.value",
        ),
        (
            "infinity",
            _raw(command(rate={"value": "@v", "unit": "mL/h"}), **{"@v": "Infinity"}),
            "bad_request",
            "rate.value",
        ),
        ("negative", command(rate={"value": -5, "unit": "mL/h"}), "bad_request", "rate.value"),
        ("huge", command(rate={"value": 1e308, "unit": "mL/h"}), "bad_request", "rate.value"),
        (
            "huge_int",
            _raw(command(rate={"value": "@v", "unit": "mL/h"}), **{"@v": "9" * 400}),
            "bad_request",
            "rate",
        ),
        ("wrong_type", command(rate={"value": "63", "unit": "mL/h"}), "bad_request", "rate.value"),
        ("wrong_type_id", {**rate, "id": 12}, "bad_request", "id"),
        ("unknown_field", {**command(), "bolus": 5}, "bad_request", "bolus: unknown field"),
        ("missing_field", {k: v for k, v in rate.items() if k != "by"}, "bad_request", "by"),
        ("nested_bomb_json", b"[" * 5000 + b"]" * 5000, "bad_request", "nested"),
        (
            "nested_bomb_field",
            {**command(), "by": {"clinician": {"a": {"b": {"c": {}}}}}},
            "bad_request",
            "nested",
        ),
        ("duplicate_key", b'{"id":"a","id":"b"}', "bad_request", "id: duplicate key"),
        ("not_an_object", b"[1,2,3]", "bad_request", "object"),
        ("bad_json", b"{not json", "bad_json", "not JSON"),
        ("not_utf8", b"\xff\xfe{}", "bad_json", "UTF-8"),
        ("empty", b"", "bad_json", "empty"),
        ("too_large", b'{"id":"x","pad":"' + b"a" * 20_000 + b'"}', "too_large", "16384"),
        (
            "old_issued_at",
            command(issued_at=datetime.now(UTC) - timedelta(hours=2)),
            "expired",
            "expired",
        ),
        (
            "future_issued_at",
            command(issued_at=datetime.now(UTC) + timedelta(minutes=5)),
            "bad_request",
            "issued_at",
        ),
        (
            "naive_issued_at",
            {**rate, "issued_at": "2026-01-01T00:00:00"},
            "bad_request",
            "issued_at",
        ),
        ("ttl_too_long", {**command(), "ttl_s": 10**9}, "bad_request", "ttl_s"),
        (
            "not_authorized",
            {**command(), "by": {"clinician": "mallory"}},
            "not_authorized",
            "mallory",
        ),
        (
            "unsigned_sig_garbage",
            {**command(), "sig": {"kid": "k", "hmac": "zz"}},
            "bad_request",
            "sig.hmac",
        ),
        (
            "sig_without_keys",
            {**command(), "sig": {"kid": "k", "hmac": "0" * 64}},
            "bad_signature",
            "unknown key id",
        ),
    ]


async def _answer(p: Probe, pump: str, payload: bytes | dict[str, Any]) -> dict[str, Any]:
    mark = len(p.messages)
    await p.send(pump, payload)
    msg = await p.wait_for(lambda m: m.topic.endswith(f"{pump}/command/result"), after=mark)
    data: dict[str, Any] = msg.data
    return data


@pytest.mark.asyncio
async def test_every_hostile_command_gets_its_specific_error_and_nothing_reaches_the_pump(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """One result per bad command, in order, each with the expected code and a message naming
    the field; the Modbus simulator sees no write and keeps its rate; the gateway keeps
    serving (a valid command afterwards is applied)."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg), probe(mosquitto.url) as p:
            failures = []
            for name, payload, code, text in _cases():
                data = await _answer(p, "pump-1", payload)
                error = data.get("error") or {}
                if data["phase"] != "rejected" or error.get("code") != code:
                    failures.append(f"{name}: {data}")
                elif text not in error.get("message", ""):
                    failures.append(f"{name}: message {error.get('message')!r} lacks {text!r}")
            assert failures == []
            assert bench.modbus.pump(1).writes == 0
            assert bench.rate("pump-1") == NE_RATE
            # the gateway is still healthy and obeys a good command
            good = command()
            await p.send("pump-1", good)
            assert (await p.result(good["id"], "applied"))["readback"]["rate"]["value"] == 63.0
            assert bench.rate("pump-1") == NE_RATE_UP


@pytest.mark.asyncio
async def test_unknown_pump_wrong_unit_and_retained_commands_are_refused(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A command for a pump that is not configured -> unknown_pump; a rate in a unit the
    library cannot convert -> rejected; a retained command -> retained: no write."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg), probe(mosquitto.url) as p:
            data = await _answer(p, "pump-9", command())
            assert data["error"]["code"] == "unknown_pump"
            assert "pump-9" in data["error"]["message"]

            data = await _answer(p, "pump-1", command(rate={"value": 63, "unit": "furlong/h"}))
            assert data["phase"] == "rejected"
            assert "furlong" in json.dumps(data)

            retained = command()
            mark = len(p.messages)
            await p.client.publish(
                "infusiond/rel-gw/pump/pump-1/command", json.dumps(retained), qos=1, retain=True
            )
            data = await p.result(retained["id"], after=mark)
            assert data["error"]["code"] == "retained"
            await p.client.publish("infusiond/rel-gw/pump/pump-1/command", b"", qos=1, retain=True)
            assert bench.modbus.pump(1).writes == 0
            assert bench.rate("pump-1") == NE_RATE


@pytest.mark.asyncio
async def test_a_replayed_command_id_is_answered_duplicate_and_never_re_executed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """After an applied command, a nurse changes the rate at the pump; replaying the same
    command (same id) is answered duplicate with the first outcome, and the device keeps the
    nurse's rate (the replay did not write)."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            first = command()
            await p.send("pump-1", first)
            await p.result(first["id"], "applied")
            writes = bench.modbus.pump(1).writes
            bench.modbus.inject("front_panel_rate", float(NE_RATE), unit=1)
            await p.wait_for(
                lambda m: (
                    m.topic.endswith("pump-1/event")
                    and m.data["type"] == "rate_changed"
                    and m.data.get("source") == "device"
                )
            )
            await p.send("pump-1", first)
            dup = await p.result(first["id"], "duplicate")
            assert dup["first"]["phase"] == "applied"
            await gateway.gate.drain()
            assert bench.modbus.pump(1).writes == writes
            assert bench.rate("pump-1") == NE_RATE


@pytest.mark.asyncio
async def test_a_ten_mebibyte_command_is_dropped_by_the_broker_and_the_gateway_stays_healthy(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The daemon's CONNECT says MaximumPacketSize 256 KiB, so mosquitto does not forward a
    10 MiB command to it (MQTT v5 3.1.2.11.4: the server drops it). The gateway never sees it,
    stays connected, the pump is untouched, and the next command is served normally."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            connections = gateway.bridge.stats.connections
            bomb = b'{"id":"bomb","pad":"' + b"a" * (10 * 1024 * 1024) + b'"}'
            await p.send("pump-1", bomb)
            good = command()
            await p.send("pump-1", good)
            await p.result(good["id"], "applied")
            assert not [
                m for m in p.messages if m.topic.endswith("result") and b"bomb" in m.payload
            ]
            assert gateway.bridge.stats.connections == connections
            assert bench.modbus.pump(1).writes > 0
            assert bench.rate("pump-1") == NE_RATE_UP


FINAL_OR_WAITING = {"applied", "rejected", "failed", "uncertain", "needs_confirmation"}
LONE = "\ud800"  # a lone surrogate: a legal JSON escape that UTF-8 cannot encode


@pytest.mark.asyncio
async def test_lone_surrogates_are_answered_bad_request_naming_the_field_and_journaled(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Regression: a command whose id (or clinician, or confirm reason) is "\\ud800" used to get
    no answer and no journal row (UnicodeEncodeError). Each now gets bad_request naming the
    field (the id answered as null when it is the id that is broken), a journal row holding that
    answer, and the pump is untouched."""
    cases = {
        "id": command(cid=LONE),
        "by.clinician": {**command(cid="lone-by"), "by": {"clinician": LONE}},
        "confirm.reason": {**command(cid="lone-reason"), "confirm": {"token": "t", "reason": LONE}},
    }
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            for field, body in cases.items():
                data = await _answer(p, "pump-1", json.dumps(body).encode())
                assert data["phase"] == "rejected", (field, data)
                assert data["id"] == (None if field == "id" else body["id"])
                assert data["error"]["code"] == "bad_request"
                assert data["error"]["message"].startswith(f"{field}:"), data
            await gateway.gate.drain()
            rows = await gateway.journal.rows(kinds=[JournalKind.COMMAND])
            answers = [r.payload["answer"] for r in rows if "answer" in r.payload]
            assert [a["error"]["message"].split(":")[0] for a in answers] == list(cases)
            assert bench.modbus.pump(1).writes == 0
            assert bench.rate("pump-1") == NE_RATE


@pytest.mark.asyncio
async def test_a_response_topic_into_the_gateway_tree_is_not_published_to(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Regression: a command whose MQTT v5 response topic is the gateway's own pump state, its
    bridge state or another gateway's command topic gets its answers on .../command/result only
    (saying so in the response-topic-ignored user property); nothing appears on the abused
    topic. A response topic of the client's own (infusiond-replies/...) is honoured."""
    abused = [
        f"{ROOT}/pump/pump-1/state",
        f"{ROOT}/bridge/state",
        "infusiond/other-gw/pump/pump-1/command",
    ]
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with (
            running_gateway(cfg),
            probe(mosquitto.url, "#") as p,
        ):
            for target in [*abused, "infusiond-replies/app-1/r"]:
                body = command()
                mark = len(p.messages)
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = target
                props.CorrelationData = b"corr"
                await p.client.publish(
                    f"{ROOT}/pump/pump-1/command", json.dumps(body), qos=1, properties=props
                )
                final = await p.wait_for(
                    lambda m, cid=body["id"]: (
                        m.topic.endswith("pump-1/command/result")
                        and m.data.get("id") == cid
                        and m.data["phase"] in FINAL_OR_WAITING
                    ),
                    after=mark,
                )
                if target not in abused:
                    await p.wait_for(
                        lambda m, target=target, cid=body["id"]: (
                            m.topic == target and m.data.get("id") == cid
                        ),
                        after=mark,
                    )
                assert final.json["data"]["id"] == body["id"]
            # the honoured reply came last: anything sent to an abused topic has arrived by now
            misdirected = [
                m for m in p.messages if m.topic in abused and b"pump.command.result" in m.payload
            ]
            assert misdirected == []


@pytest.mark.asyncio
async def test_a_huge_pump_id_in_the_topic_costs_a_bounded_journal_row_and_no_crash(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Regression: a 60,000-character pump id used to cost 99 KiB of journal per 1-byte message.
    Each such command is answered unknown_pump on its own result topic with a message cut to
    512 characters, and journaled in well under 1 KiB (the id capped to 64 characters plus its
    length and a hash). A pump id so long that its result topic would exceed MQTT's 65,535
    bytes cannot be answered: it is dropped and counted, and the gateway keeps serving."""
    huge = "p" * 60_000
    too_long = "q" * (65_535 - len(f"{ROOT}/pump//command"))
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            for _ in range(3):
                data = await _answer(p, huge, b"x")
                assert data["phase"] == "rejected"
                assert data["error"]["code"] == "bad_json"
            data = await _answer(p, huge, json.dumps(command()).encode())
            assert data["error"]["code"] == "unknown_pump"
            assert len(data["error"]["message"]) <= 512
            await p.send(too_long, b"x")
            good = command()
            await p.send("pump-1", good)
            await p.result(good["id"], "applied")
            await gateway.gate.drain()
            assert gateway.bridge.stats.results_dropped == 1
            rows = await gateway.journal.rows(kinds=[JournalKind.COMMAND])
            refusals = [r for r in rows if "answer" in r.payload]
            assert len(refusals) == 5
            for row in refusals:
                assert len(json.dumps(row.payload)) + len(row.pump_id or "") < 1024, row
                assert row.pump_id is not None
                assert row.pump_id.startswith(huge[:64] if "p" in row.pump_id else too_long[:64])
