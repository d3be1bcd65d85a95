"""docs/asyncapi.yaml describes every MQTT topic with its QoS and retain flag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs.docs_text import ASYNCAPI, SCHEMAS

ROOT_ADDRESS = "infusiond/{gateway_id}/"
# The topic table of docs/integration-guide.md: topic -> (retained, QoS, the daemon's action)
TOPICS = {
    "bridge/state": (True, 1, "send"),
    "bridge/info": (True, 1, "send"),
    "bridge/health": (True, 1, "send"),
    "pump/{pump_id}/availability": (True, 1, "send"),
    "pump/{pump_id}/state": (True, 1, "send"),
    "pump/{pump_id}/event": (False, 1, "send"),
    "pump/{pump_id}/command": (False, 1, "receive"),
    "pump/{pump_id}/command/result": (False, 1, "send"),
    "vitals/{bed_id}/state": (True, 1, "send"),
    "bridge/request/library": (False, 1, "receive"),
    "bridge/response/library": (False, 1, "send"),
    "bridge/request/events": (False, 1, "receive"),
    "bridge/response/events": (False, 1, "send"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (``#/a/b``) in the AsyncAPI document."""
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def walk_refs(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_is_asyncapi_3_with_demo_and_production_servers(doc: dict[str, Any]) -> None:
    """AsyncAPI 3.0.0, JSON payloads, an mqtt demo server and an mqtts production server."""
    assert doc["asyncapi"] == "3.0.0"
    assert doc["defaultContentType"] == "application/json"
    servers = doc["servers"]
    assert servers["demo"]["protocol"] == "mqtt"
    assert servers["production"]["protocol"] == "secure-mqtt"
    for server in servers.values():
        assert server["protocolVersion"] == "5"
        will = server["bindings"]["mqtt"]["lastWill"]
        assert will["topic"].endswith("/bridge/state")
        assert (will["qos"], will["retain"], will["message"]) == (1, True, '{"state":"offline"}')


def test_every_documented_topic_has_a_channel_and_nothing_else(doc: dict[str, Any]) -> None:
    """The channels are exactly the documented topics, under infusiond/{gateway_id}/."""
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {ROOT_ADDRESS + t for t in TOPICS}


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_topic_operation_has_documented_qos_retain_and_direction(
    doc: dict[str, Any], topic: str
) -> None:
    """Each topic has one operation from the daemon's point of view, with its documented flags."""
    retained, qos, action = TOPICS[topic]
    name = next(n for n, c in doc["channels"].items() if c["address"] == ROOT_ADDRESS + topic)
    ops = [op for op in doc["operations"].values() if op["channel"]["$ref"] == f"#/channels/{name}"]
    assert len(ops) == 1, f"{topic}: {len(ops)} operations"
    binding = ops[0]["bindings"]["mqtt"]
    assert (ops[0]["action"], binding["qos"], binding["retain"]) == (action, qos, retained)


def test_channel_parameters_are_declared(doc: dict[str, Any]) -> None:
    """Every {parameter} in an address is declared on its channel and in components."""
    for name, channel in doc["channels"].items():
        used = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert set(channel.get("parameters", {})) == used, name
        for param in used:
            assert param in doc["components"]["parameters"]


def test_command_operation_replies_on_the_result_channel(doc: dict[str, Any]) -> None:
    """receivePumpCommand's reply is the command/result channel."""
    op = doc["operations"]["receivePumpCommand"]
    assert op["reply"]["channel"]["$ref"] == "#/channels/pumpCommandResult"


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    """Local refs point into the document; file refs name an existing JSON Schema whose $id is
    the message's title (the schema string)."""
    refs = walk_refs(doc)
    assert len(refs) > 30
    for ref in refs:
        if ref.startswith("#/"):
            resolve(doc, ref)
        else:
            target = (ASYNCAPI.parent / ref).resolve()
            assert target.is_file(), ref
            assert target.parent == SCHEMAS.resolve(), ref
            json.loads(target.read_text(encoding="utf-8"))
    for name, message in doc["components"]["messages"].items():
        ref = message["payload"].get("$ref", "")
        if ref.startswith("./"):
            schema = json.loads((ASYNCAPI.parent / ref).read_text(encoding="utf-8"))
            assert schema["$id"] == message["title"], name


def test_every_published_schema_is_referenced(doc: dict[str, Any]) -> None:
    """No payload schema in docs/schemas is missing from the API description."""
    referenced = {Path(r).name for r in walk_refs(doc) if not r.startswith("#")}
    assert referenced == {p.name for p in SCHEMAS.glob("*.json")}
