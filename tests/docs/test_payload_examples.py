"""Every JSON example in the guides and in asyncapi.yaml validates against its JSON Schema."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from daemon.command_parse import Command, parse_command
from daemon.timefmt import parse_ts
from tests.docs.docs_text import ASYNCAPI, GUIDES, SCHEMAS, Block, blocks

COMMAND_SCHEMA = "infusiond.pump.command/1"
# mosquitto_pub -m '...' with the current time spliced in by the shell
_PUB_PAYLOAD = re.compile(r"-m '((?:[^']|'\"\$\(date -u \+%FT%TZ\)\"')*)'")
_NOW_SPLICE = "'\"$(date -u +%FT%TZ)\"'"
FIXED_NOW = "2026-11-26T17:30:00Z"


@cache
def validator(schema_id: str) -> jsonschema.Draft202012Validator:
    path = SCHEMAS / (schema_id.replace("/", "-") + ".json")
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$id"] == schema_id, path
    return jsonschema.Draft202012Validator(schema)


def is_command(obj: Any) -> bool:
    return isinstance(obj, dict) and "action" in obj and "id" in obj and "data" not in obj


def check_payload(obj: Any, where: str) -> str:
    """Validate one example; returns the schema id it was validated against."""
    schema_id = obj.get("schema") if isinstance(obj, dict) else None
    if schema_id is None and is_command(obj):
        schema_id = COMMAND_SCHEMA
    assert isinstance(schema_id, str), f"{where}: neither an envelope nor a command"
    errors = [e.message for e in validator(schema_id).iter_errors(obj)]
    assert not errors, f"{where}: invalid {schema_id}: {errors}"
    if schema_id == COMMAND_SCHEMA:
        now = parse_ts(obj["issued_at"])
        parsed = parse_command(json.dumps(obj).encode(), now=now)
        assert isinstance(parsed, Command), f"{where}: the daemon would reject it: {parsed}"
    return schema_id


def json_blocks() -> list[Block]:
    return [b for path in GUIDES for b in blocks(path) if b.lang == "json"]


def pub_payloads() -> list[tuple[str, str]]:
    found = []
    for path in GUIDES:
        for block in blocks(path):
            if block.lang == "sh":
                for match in _PUB_PAYLOAD.finditer(block.text):
                    start = block.text.rfind("mosquitto_pub", 0, match.start())
                    if "/sim/" in block.text[start : match.start()]:
                        continue  # a simulator fault (biomed guide), not a pump command
                    found.append((block.where, match.group(1).replace(_NOW_SPLICE, FIXED_NOW)))
    return found


def asyncapi_examples() -> list[tuple[str, Any]]:
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return [
        (f"asyncapi.yaml messages.{name} example {ex.get('name')}", ex["payload"])
        for name, message in doc["components"]["messages"].items()
        if str(message["payload"].get("$ref", "")).startswith("./schemas/")
        for ex in message.get("examples", [])
    ]


@pytest.mark.parametrize("block", json_blocks(), ids=lambda b: b.where)
def test_guide_json_example_is_a_valid_envelope_or_command(block: Block) -> None:
    """A ```json block in a guide is an envelope or a command that its schema accepts (and a
    command that the daemon's own parser accepts at its issued_at)."""
    check_payload(json.loads(block.text), block.where)


def test_guides_show_every_published_kind_and_commands() -> None:
    """The guides' JSON examples cover commands and the payload kinds clients handle most."""
    kinds = {check_payload(json.loads(b.text), b.where) for b in json_blocks()}
    assert {
        COMMAND_SCHEMA,
        "infusiond.pump.state/1",
        "infusiond.pump.event/1",
        "infusiond.pump.command.result/1",
        "infusiond.vitals.state/1",
    } <= kinds


@pytest.mark.parametrize(("where", "payload"), pub_payloads(), ids=lambda v: str(v)[:40])
def test_mosquitto_pub_payload_is_a_valid_command(where: str, payload: str) -> None:
    """Every `mosquitto_pub -m '...'` in the guides sends a command the daemon accepts."""
    obj = json.loads(payload)
    assert check_payload(obj, where) == COMMAND_SCHEMA


def test_mosquitto_pub_examples_cover_every_action() -> None:
    """The shell examples show set_dose, set_rate, start, stop, pause and program."""
    actions = {json.loads(p)["action"] for _, p in pub_payloads()}
    assert actions == {"set_dose", "set_rate", "start", "stop", "pause", "program"}


@pytest.mark.parametrize(("where", "payload"), asyncapi_examples(), ids=lambda v: str(v)[:60])
def test_asyncapi_example_validates(where: str, payload: Any) -> None:
    """Every message example in asyncapi.yaml validates against the schema it references."""
    check_payload(payload, where)


def test_asyncapi_examples_match_their_message_schema() -> None:
    """An example sits under the message whose payload schema it carries."""
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    for name, message in doc["components"]["messages"].items():
        ref = message["payload"].get("$ref", "")
        if not ref.startswith("./schemas/"):
            continue
        schema_id = json.loads((ASYNCAPI.parent / ref).read_text(encoding="utf-8"))["$id"]
        for ex in message.get("examples", []):
            payload = ex["payload"]
            assert payload.get("schema", COMMAND_SCHEMA) == schema_id, (name, ex["name"])


def test_example_times_are_rfc3339_utc_milliseconds() -> None:
    """Published examples spell every time as the contract does (Z, milliseconds)."""
    stamp = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
    published = [json.loads(b.text) for b in json_blocks()] + [p for _, p in asyncapi_examples()]
    for obj in published:
        if isinstance(obj, dict) and "ts" in obj:
            assert stamp.match(obj["ts"]), obj["ts"]
            datetime.fromisoformat(obj["ts"])
