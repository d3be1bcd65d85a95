"""`infusiond watch`: the gateway's payloads become a readable 80x24 view; bad input is counted."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
from rich.console import Console

from daemon.ui.watch import WatchModel, parse_broker, render
from daemon.ui.watch import run as watch_run
from tests.support.procs import Mosquitto

NOW = datetime(2026, 11, 26, 12, 0, 10, tzinfo=UTC)
AT = "2026-11-26T12:00:05.000Z"
PUMP1 = "infusiond/demo/pump/pump-1/state"


def _env(kind: str, data: dict[str, Any], seq: int = 7) -> bytes:
    return json.dumps(
        {
            "schema": f"infusiond.{kind}/1",
            "gateway": "demo",
            "session": "s-1",
            "seq": seq,
            "ts": "2026-11-26T12:00:09.000Z",
            "data": data,
        }
    ).encode()


def _pump(drug: str, dose: float, unit: str, rate: float, alarms: list[str] = []) -> bytes:  # noqa: B006
    return _env(
        "pump.state",
        {
            "connection": "online",
            "status": "infusing",
            "rate": {"value": rate, "unit": "mL/h"},
            "dose": {"value": dose, "unit": unit},
            "drug": drug,
            "alarms": [{"code": a, "priority": "high", "since": AT} for a in alarms],
        },
    )


def _vitals(map_value: float, at: str = AT, stale: bool = False) -> bytes:
    def v(value: float, unit: str) -> dict[str, Any]:
        out: dict[str, Any] = {"value": value, "unit": unit, "at": at}
        if stale:
            out["stale"] = True
        return out

    return _env(
        "vitals.state",
        {
            "map": v(map_value, "mm[Hg]"),
            "sbp": v(105, "mm[Hg]"),
            "dbp": v(60, "mm[Hg]"),
            "hr": v(89, "/min"),
            "spo2": None,
            "source": "hl7:INFUSIOND-SIM",
        },
    )


DEMO_BEDSIDE = [
    ("infusiond/demo/bridge/state", b'{"state":"online"}'),
    (
        "infusiond/demo/bridge/info",
        _env("bridge.info", {"library": {"name": "vaso", "version": "1"}}),
    ),
    ("infusiond/demo/pump/pump-1/state", _pump("norepinephrine", 0.05, "ug/kg/min", 52.5)),
    ("infusiond/demo/pump/pump-2/state", _pump("vasopressin", 0.03, "[USP'U]/min", 9.0)),
    ("infusiond/demo/vitals/bed-1/state", _vitals(75)),
    (
        "infusiond/demo/pump/pump-1/event",
        _env(
            "pump.event",
            {
                "type": "rate_changed",
                "from": {"rate": {"value": 52.5, "unit": "mL/h"}},
                "to": {"rate": {"value": 63.0, "unit": "mL/h"}},
                "command": "c-1",
            },
        ),
    ),
    (
        "infusiond/demo/pump/pump-1/command/result",
        _env(
            "pump.command.result",
            {
                "id": "c-2",
                "phase": "rejected",
                "verdict": {"verdict": "reject", "findings": [{"rule": "HARD_MAX"}]},
            },
        ),
    ),
]


def _text(model: WatchModel) -> str:
    console = Console(width=80, height=24, file=io.StringIO(), record=True, color_system=None)
    console.print(render(model, NOW))
    return console.export_text()


def test_demo_bedside_fits_80x24_and_shows_every_pump_and_bed() -> None:
    """Two pumps, one bed, events: everything shown, no line over 80, at most 24 lines."""
    model = WatchModel()
    for topic, payload in DEMO_BEDSIDE:
        model.apply(topic, payload)
    text = _text(model)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24
    assert max(len(line) for line in lines) <= 80
    assert "demo online seq 7" in text
    assert "pump-1" in text
    assert "52.50 mL/h" in text
    assert "0.05 ug/kg/min" in text
    assert "vasopressin" in text
    assert "9.00 mL/h" in text
    bed_line = next(line for line in lines if line.startswith("bed-1"))
    assert bed_line.split()[:7] == ["bed-1", "75", "105", "60", "89", "-", "5s"]
    assert "pump-1 rate_changed 52.5 mL/h -> 63 mL/h" in text
    assert "command c-2 rejected HARD_MAX" in text
    assert model.problems == 0


def test_stale_vitals_and_alarms_are_marked() -> None:
    """A stale value carries '!' and pump alarms are listed by code."""
    model = WatchModel()
    model.apply("infusiond/demo/vitals/bed-1/state", _vitals(60, stale=True))
    model.apply(PUMP1, _pump("norepinephrine", 0.1, "ug/kg/min", 105, ["occlusion"]))
    text = _text(model)
    assert "60!" in text
    assert "occlusion" in text


def test_latest_state_replaces_the_previous_one() -> None:
    """A new pump state replaces the old line (retained republish does not duplicate)."""
    model = WatchModel()
    model.apply(PUMP1, _pump("norepinephrine", 0.05, "ug/kg/min", 52.5))
    model.apply(PUMP1, _pump("norepinephrine", 0.06, "ug/kg/min", 63.0))
    text = _text(model)
    assert "63.00 mL/h" in text
    assert "52.50" not in text


@pytest.mark.parametrize(
    ("topic", "payload", "problem"),
    [
        ("other/demo/x/y", b"{}", "not an infusiond topic"),
        ("infusiond/demo/pump/pump-1/state", b"{not json", "bad JSON"),
        ("infusiond/demo/pump/pump-1/state", b'{"data": 3}', "no envelope with a data object"),
        ("infusiond/demo/pump/pump-1/state", b"\xff\xfe", "bad JSON"),
        ("infusiond/demo/mystery/thing", _env("x", {}), "unknown topic"),
        ("infusiond/demo/pump/pump-1/state", b"x" * 70_000, "payload over 65536 bytes"),
    ],
)
def test_bad_messages_are_counted_and_shown_not_raised(
    topic: str, payload: bytes, problem: str
) -> None:
    """Garbage on the topic tree never crashes the view; the last problem is displayed."""
    model = WatchModel()
    model.apply(topic, payload)
    assert model.problems == 1
    assert problem in model.last_problem
    assert "1 bad message(s)" in _text(model)


def test_multiple_gateways_prefix_ids() -> None:
    """With two gateways the pump and bed names carry their gateway."""
    model = WatchModel()
    model.apply("infusiond/a/pump/pump-1/state", _pump("norepinephrine", 0.05, "ug/kg/min", 52.5))
    model.apply("infusiond/b/vitals/bed-1/state", _vitals(75))
    text = _text(model)
    assert "a/pump-1" in text
    assert "b/bed-1" in text


def test_broker_url_parsing() -> None:
    """mqtt://host:port parses; other schemes are refused with the option named."""
    assert parse_broker("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_broker("localhost") == ("localhost", 1883)
    with pytest.raises(ValueError, match="--broker 'http://x': scheme must be mqtt://"):
        parse_broker("http://x")


def test_watch_once_reads_retained_state_from_a_real_broker(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """`infusiond watch --broker URL --once` prints the retained bedside from mosquitto."""

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for topic, payload in DEMO_BEDSIDE[:5]:
                await client.publish(topic, payload, qos=1, retain=True)

    asyncio.run(publish())
    args = argparse.Namespace(broker=mosquitto.url, gateway="demo", once=True)
    assert watch_run(args) == 0
    out = capsys.readouterr().out
    assert "pump-1" in out
    assert "52.50 mL/h" in out
    assert "bed-1" in out
    assert "demo online" in out
