"""``watch --once`` exits 1 with a clear message when there is nothing to show, and recent
events are loaded from the daemon's history API (real mosquitto, real HTTP server, real journal)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from daemon.core.pump_events import event_from_json
from daemon.journal import AsyncJournal
from daemon.journal.history import History
from daemon.ui.watch import WatchModel, load_history
from daemon.ui.watch import run as watch_run
from daemon.ui.web_server import WebServer
from tests.support.procs import Mosquitto


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def once(broker: str, **extra: object) -> argparse.Namespace:
    return argparse.Namespace(broker=broker, gateway="demo", once=True, **extra)


def test_once_without_a_broker_exits_1_naming_it(
    refused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at --broker: exit 1, stderr says which broker could not be reached."""
    url = f"mqtt://127.0.0.1:{refused_port}"
    assert watch_run(once(url)) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the broker at {url}" in err


def test_once_with_no_pumps_exits_1_and_says_why(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reachable broker with no pump state for the gateway: exit 1, not "no pumps yet" and 0."""
    assert watch_run(once(mosquitto.url)) == 1
    err = capsys.readouterr().err
    assert "no pump state on infusiond/demo/#" in err
    assert "is the daemon running" in err


def test_http_must_be_an_http_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert watch_run(once("mqtt://127.0.0.1:1", http="ftp://x")) == 2
    assert "--http 'ftp://x': must start with http:// or https://" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_recent_events_come_from_the_history_api(tmp_path: Path) -> None:
    """load_history fills recent with the journal's last events, oldest first."""
    now = datetime.now(UTC)
    async with await AsyncJournal.open(tmp_path / "d", gateway_id="demo") as journal:
        alarm = {"code": "occlusion", "priority": "high", "since": "2026-12-06T12:00:00.000Z"}
        await journal.record_event(
            "pump-2",
            event_from_json({"type": "alarm_raised", "alarm": alarm}),
            ts=now - timedelta(minutes=4),
        )
        await journal.record_event(
            "pump-1",
            event_from_json({"type": "delivery_stopped", "status": "stopped"}),
            ts=now - timedelta(minutes=2),
        )
        history = History("demo", lambda: journal, lambda: ("pump-1", "pump-2"))
        async with WebServer(broker_ws_url=None, gateway="demo", history=history) as srv:
            model = WatchModel()
            await load_history(model, srv.url)
    assert [line.split(" ", 1)[1] for line in model.events] == [
        "demo/pump-2 alarm_raised occlusion",
        "demo/pump-1 delivery_stopped",
    ]
    assert model.problems == 0


@pytest.mark.asyncio
async def test_an_unreachable_history_api_is_shown_not_fatal(refused_port: int) -> None:
    model = WatchModel()
    await load_history(model, f"http://127.0.0.1:{refused_port}")
    assert model.last_problem.startswith("history: ")
    assert not model.events


def test_once_prints_retained_state_with_history(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """With retained pump state the frame is printed and the exit is 0 (the happy path)."""

    async def publish() -> None:
        state = {
            "schema": "infusiond.pump.state/1",
            "gateway": "demo",
            "session": "s",
            "seq": 1,
            "ts": "2026-12-06T12:00:00.000Z",
            "data": {"connection": "online", "status": "infusing",
                     "dose": {"value": 0.066667, "unit": "ug/kg/min"}},
        }  # fmt: skip
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish(
                "infusiond/demo/bridge/state", b'{"state":"online"}', qos=1, retain=True
            )
            await client.publish(
                "infusiond/demo/pump/pump-1/state", json.dumps(state), qos=1, retain=True
            )

    asyncio.run(publish())
    assert watch_run(once(mosquitto.url)) == 0
    out = capsys.readouterr().out
    assert "0.0667 ug/kg/min" in out
