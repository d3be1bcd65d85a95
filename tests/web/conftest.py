"""Shared by the web tests: a mosquitto with a WebSocket listener (the dashboard's broker), and
the check of an HTTP API answer against its published schema (docs/schemas/http)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.support.procs import Mosquitto


@pytest.fixture
def ws_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int]]:
    """mosquitto with a second, WebSocket listener on loopback; yields (broker, ws port)."""
    broker = Mosquitto(tmp_path / "mosquitto", websockets=True)
    broker.start()  # on ports taken meanwhile, mosquitto is restarted on new ones
    try:
        yield broker, broker.ws_port
    finally:
        broker.stop()


SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@cache
def _validator(path: Path) -> Draft202012Validator:
    return Draft202012Validator(json.loads(path.read_text()))


def check_api_answer(status: int, body: dict[str, Any]) -> None:
    """``body`` matches its schema: infusiond.api.error/1 for 400/503, else the schema it
    names; each event's ``data`` is also a valid ``infusiond.pump.event/1`` data object."""
    schema = "infusiond.api.error/1" if status in {400, 503} else body["schema"]
    path = SCHEMAS / "http" / (schema.replace("/", "-") + ".json")
    errors = [e.message for e in _validator(path).iter_errors(body)]
    assert not errors, (schema, errors)
    if schema == "infusiond.api.events/1":
        event_schema = _validator(SCHEMAS / "infusiond.pump.event-1.json")
        for item in body["data"]["events"]:
            published = {"schema": "infusiond.pump.event/1", "gateway": body["gateway"],
                         "session": body["session"], "seq": item["seq"], "ts": item["ts"],
                         "data": item["data"]}  # fmt: skip
            errors = [e.message for e in event_schema.iter_errors(published)]
            assert not errors, (item, errors)
