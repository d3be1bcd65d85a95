"""/api/events, /api/history and /metrics of daemon.ui.web_server over real loopback sockets, read
from a real journal (SQLite in tmp_path); the clock is fixed so windows are exact."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry, Counter

from daemon.base.events import ConnectionChanged, PumpEvent
from daemon.base.quantities import Quantity
from daemon.core.pump_events import event_from_json
from daemon.journal import AsyncJournal
from daemon.journal.history import EVENT_TYPES, MAX_ROWS, History
from daemon.ui.web_server import WebServer
from drivers.base import ConnectionState
from tests.web.conftest import check_api_answer

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
WS_URL = "ws://127.0.0.1:9001/"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def rate(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mL/h"}


def dose(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "ug/kg/min"}


def change(old: float, new: float) -> PumpEvent:
    return event_from_json(
        {
            "type": "rate_changed",
            "from": {"rate": rate(old), "dose": dose(old / 100)},
            "to": {"rate": rate(new), "dose": dose(new / 100)},
            "source": "device",
        }
    )


@pytest_asyncio.fixture
async def journal(tmp_path: Path) -> AsyncIterator[AsyncJournal]:
    """A journal holding two pumps' events: one before the 30-min window, several inside."""
    async with await AsyncJournal.open(tmp_path / "data", gateway_id="gw") as j:
        await j.record_event("pump-1", change(40, 50), ts=NOW - timedelta(hours=2))
        await j.record_event("pump-1", change(50, 60), ts=NOW - timedelta(minutes=20))
        await j.record_event(
            "pump-2",
            event_from_json(
                {
                    "type": "alarm_raised",
                    "alarm": {
                        "code": "occlusion",
                        "priority": "high",
                        "since": "2026-12-06T11:50:00.000Z",
                    },
                }
            ),
            ts=NOW - timedelta(minutes=10),
        )
        await j.record_event(
            "pump-1",
            event_from_json({"type": "delivery_stopped", "status": "stopped"}),
            ts=NOW - timedelta(minutes=5),
        )
        yield j


def server(journal: AsyncJournal | None, **kwargs: Any) -> WebServer:
    history = History(
        gateway="gw",
        journal=lambda: journal,
        pumps=lambda: ("pump-1", "pump-2"),
        dose_obj=lambda _pump, r: dose(r / 100),
    )
    return WebServer(
        broker_ws_url=WS_URL, gateway="gw", history=history, clock=lambda: NOW, **kwargs
    )


async def get(
    srv: WebServer, path: str
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    """GET an API path; the answer is checked against its published schema first."""
    async with aiohttp.ClientSession() as session, session.get(f"{srv.url}{path}") as resp:
        body = json.loads(await resp.read())
        check_api_answer(resp.status, body)
        return resp.status, body, resp.headers


@pytest.mark.asyncio
async def test_events_default_to_the_last_30_minutes_oldest_first(journal: AsyncJournal) -> None:
    """Without parameters: every pump's events of the last 30 min, the pump.event data as
    published, in time order; the event from 2 h ago is not in the window."""
    async with server(journal) as srv:
        status, body, headers = await get(srv, "api/events")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert body["schema"] == "infusiond.api.events/1"
    assert body["gateway"] == "gw"
    assert body["session"] == journal.session
    data = body["data"]
    assert data["since"] == "2026-12-06T11:30:00.000Z"
    assert data["until"] == "2026-12-06T12:00:00.000Z"
    assert [(e["pump_id"], e["data"]["type"]) for e in data["events"]] == [
        ("pump-1", "rate_changed"),
        ("pump-2", "alarm_raised"),
        ("pump-1", "delivery_stopped"),
    ]
    assert data["events"][0]["data"]["to"]["rate"] == rate(60)
    assert [e["seq"] for e in data["events"]] == [2, 3, 4]
    assert data["truncated"] is False


@pytest.mark.asyncio
async def test_events_of_one_pump_with_a_limit_keep_the_newest(journal: AsyncJournal) -> None:
    """pump= narrows to one pump; limit= keeps the newest rows and says it truncated."""
    async with server(journal) as srv:
        status, body, _ = await get(srv, "api/events?pump=pump-1&since=3h&limit=2")
    assert status == 200
    events = body["data"]["events"]
    assert [e["data"]["type"] for e in events] == ["rate_changed", "delivery_stopped"]
    assert events[0]["data"]["to"]["rate"] == rate(60)
    assert body["data"]["truncated"] is True
    assert body["data"]["pumps"] == ["pump-1"]


@pytest.mark.asyncio
async def test_since_takes_an_rfc3339_time(journal: AsyncJournal) -> None:
    """since= may be an absolute time with a zone: 12:52+01:00 is 11:52Z, after which only
    the stop happened."""
    async with server(journal) as srv:
        status, body, _ = await get(srv, "api/events?since=2026-12-06T12:52:00%2B01:00")
    assert status == 200
    assert [e["data"]["type"] for e in body["data"]["events"]] == ["delivery_stopped"]


@pytest.mark.asyncio
async def test_history_starts_from_the_value_before_the_window(journal: AsyncJournal) -> None:
    """Each pump's series begins at the window start with the rate it had then (carried in from
    2 h ago), then every change in the window; a stop is rate 0 and dose 0 in the pump's unit."""
    async with server(journal) as srv:
        status, body, _ = await get(srv, "api/history")
    assert status == 200
    assert body["schema"] == "infusiond.api.history/1"
    points = body["data"]["pumps"]["pump-1"]["points"]
    assert [(p["ts"], p["why"], p["rate"], p["dose"]) for p in points] == [
        ("2026-12-06T11:30:00.000Z", "before", rate(50), dose(0.5)),
        ("2026-12-06T11:40:00.000Z", "rate_changed", rate(60), dose(0.6)),
        ("2026-12-06T11:55:00.000Z", "delivery_stopped", rate(0), dose(0)),
    ]
    assert body["data"]["pumps"]["pump-2"] == {"points": [], "truncated": False}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ("since=25h", "since", "maximum of 24 h"),
        ("since=yesterday", "since", "neither a duration"),
        ("since=2026-12-06T12:00:00", "since", "neither a duration"),
        ("since=2026-12-07T12:00:00Z", "since", "in the future"),
        ("pump=pump-9", "pump", "not a pump here (known: pump-1, pump-2)"),
        ("limit=0", "limit", f"from 1 to {MAX_ROWS}"),
        (f"limit={MAX_ROWS + 1}", "limit", f"from 1 to {MAX_ROWS}"),
        ("limit=-1", "limit", f"from 1 to {MAX_ROWS}"),
        ("until=now", "until", "unknown parameter"),
        ("pump=pump-1&pump=pump-2", "pump", "more than once"),
    ],
)
async def test_a_bad_query_is_400_naming_the_parameter(
    journal: AsyncJournal, query: str, parameter: str, words: str
) -> None:
    """Out-of-bounds windows and row counts, unknown pumps and parameters: 400, JSON naming
    the parameter and the limit; nothing is read."""
    async with server(journal) as srv:
        status, body, _ = await get(srv, f"api/events?{query}")
    assert status == 400
    assert body["error"] == "bad_query"
    [problem] = body["problems"]
    assert problem["parameter"] == parameter
    assert words in problem["message"]


@pytest.mark.asyncio
async def test_every_problem_is_listed(journal: AsyncJournal) -> None:
    """Several bad parameters: all of them are named, not only the first."""
    async with server(journal) as srv:
        status, body, _ = await get(srv, "api/history?since=99h&pump=x&limit=5")
    assert status == 400
    assert [p["parameter"] for p in body["problems"]] == ["limit", "since", "pump"]


@pytest.mark.asyncio
async def test_before_the_journal_opens_the_api_is_503() -> None:
    """The server starts before the gateway has its journal: a clear 503, not an empty list."""
    async with server(None) as srv:
        status, body, _ = await get(srv, "api/events")
    assert status == 503
    assert "not open yet" in body["message"]


@pytest.mark.asyncio
async def test_without_a_history_the_api_is_404_and_config_says_so() -> None:
    """A server not given a history serves no /api (404) and /config.json has no "api"."""
    async with (
        WebServer(broker_ws_url=WS_URL, gateway="gw") as srv,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{srv.url}api/events") as resp:
            assert resp.status == 404
        async with session.get(f"{srv.url}config.json") as resp:
            assert "api" not in json.loads(await resp.read())
        async with session.get(f"{srv.url}metrics") as resp:
            assert resp.status == 404


@pytest.mark.asyncio
async def test_config_json_points_the_page_at_the_api(journal: AsyncJournal) -> None:
    """With a history, /config.json tells the page where the API is (relative URLs)."""
    async with (
        server(journal) as srv,
        aiohttp.ClientSession() as session,
        session.get(f"{srv.url}config.json") as resp,
    ):
        document = json.loads(await resp.read())
    assert document["api"] == {"events": "api/events", "history": "api/history"}


@pytest.mark.asyncio
async def test_metrics_serve_the_registry_in_prometheus_text_format(journal: AsyncJournal) -> None:
    """/metrics is generate_latest() of the registry given, with Prometheus' content type."""
    registry = CollectorRegistry()
    polls = Counter("infusiond_test_polls", "Polls made.", ["pump"], registry=registry)
    polls.labels(pump="pump-1").inc(3)
    async with (
        server(journal, metrics_registry=registry) as srv,
        aiohttp.ClientSession() as session,
        session.get(f"{srv.url}metrics") as resp,
    ):
        text = (await resp.read()).decode()
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
    assert 'infusiond_test_polls_total{pump="pump-1"} 3.0' in text
    assert "# HELP infusiond_test_polls_total Polls made." in text


def test_event_types_are_the_published_schemas() -> None:
    """The API reads every pump.event type the schema publishes, and no other."""
    schema = json.loads((SCHEMAS / "infusiond.pump.event-1.json").read_text())
    assert set(EVENT_TYPES) == set(schema["$defs"]["data"]["properties"]["type"]["enum"])


@pytest.mark.asyncio
async def test_the_operator_guide_shows_the_real_400(journal: AsyncJournal) -> None:
    """The guide's example of a refused query is byte for byte what the server answers."""
    guide = (SCHEMAS.parent / "operator-guide.md").read_text()
    shown = next(line for line in guide.splitlines() if line.startswith('{"error":"bad_query"'))
    async with (
        server(journal) as srv,
        aiohttp.ClientSession() as session,
        session.get(f"{srv.url}api/events?since=2d&limit=5000") as resp,
    ):
        assert resp.status == 400
        assert (await resp.read()).decode() == shown


@pytest.mark.asyncio
async def test_history_marks_connections_online_with_their_rate_and_offline_as_unknown(
    tmp_path: Path,
) -> None:
    """A connection (online, with the rate read then) is a point with that rate and its dose;
    going offline is a point with rate and dose unknown (null), not a zero."""
    async with await AsyncJournal.open(tmp_path / "d2", gateway_id="gw") as j:
        online = ConnectionChanged(
            ConnectionState.ONLINE, ConnectionState.CONNECTING, rate=Quantity.rate(52.5)
        )
        await j.record_event("pump-2", online, ts=NOW - timedelta(minutes=15))
        offline = ConnectionChanged(ConnectionState.OFFLINE, ConnectionState.ONLINE)
        await j.record_event("pump-2", offline, ts=NOW - timedelta(minutes=10))
        async with server(j) as srv:
            status, body, _ = await get(srv, "api/history?pump=pump-2")
    assert status == 200
    points = body["data"]["pumps"]["pump-2"]["points"]
    assert [(p["why"], p["rate"], p["dose"]) for p in points] == [
        ("connection_changed", rate(52.5), dose(0.525)),
        ("connection_changed", None, None),
    ]


def test_api_schemas_are_draft_2020_12_named_by_their_id() -> None:
    """docs/schemas/http holds the API's answers' schemas: valid, $id = file name."""
    paths = sorted((SCHEMAS / "http").glob("*.json"))
    assert [p.name for p in paths] == [
        "infusiond.api.error-1.json",
        "infusiond.api.events-1.json",
        "infusiond.api.history-1.json",
    ]
    for path in paths:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$id"].replace("/", "-") + ".json" == path.name
