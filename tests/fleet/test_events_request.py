"""Gateway side of the backfill: bridge/request/events answered from a real journal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from daemon.base.topics import Topics
from daemon.journal import AsyncJournal, Journal
from daemon.mqtt import events_request
from daemon.mqtt.event_messages import outbox_message
from daemon.mqtt.events_request import MAX_PAGE_EVENTS, answer
from tests.support.events import started, stopped

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "docs/schemas/infusiond.bridge.events.response-1.json"
    ).read_text()
)


def req(**fields: Any) -> bytes:
    return json.dumps({"id": "r-1", **fields}).encode()


async def _journal(tmp_path: Path, events: int) -> AsyncJournal:
    journal = await AsyncJournal.open(tmp_path, gateway_id="gw-a")
    for n in range(events):
        pump = "pump-1" if n % 2 else "pump-2"
        await journal.record_event(pump, started(n + 1), ts=NOW)
    return journal


def _validate(data: dict[str, Any], journal: AsyncJournal) -> dict[str, Any]:
    body = json.loads(events_request.response_body(data, gateway="gw-a", source=journal, ts=NOW))
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(body)]
    assert errors == []
    return body


@pytest.mark.asyncio
async def test_a_range_is_answered_with_the_events_as_published(tmp_path: Path) -> None:
    async with await _journal(tmp_path, 5) as journal:
        published = {
            item.seq: json.loads(
                outbox_message(item, topics=Topics("gw-a"), session=journal.session)[1]
            )
            for item in await journal.outbox_pending()
        }
        data = await answer(
            req(from_seq=2, to_seq=4, session=journal.session),
            retained=False,
            source=journal,
            gateway="gw-a",
        )
        _validate(data, journal)
        assert data["status"] == "ok"
        assert "next_seq" not in data
        assert [e["seq"] for e in data["events"]] == [2, 3, 4]
        for event in data["events"]:
            pump_id = event.pop("pump_id")
            assert event == published[event["seq"]]
            assert pump_id == ("pump-2" if event["seq"] % 2 else "pump-1")


@pytest.mark.asyncio
async def test_a_large_range_comes_in_bounded_pages(tmp_path: Path) -> None:
    async with await _journal(tmp_path, MAX_PAGE_EVENTS + 20) as journal:
        first = await answer(
            req(from_seq=1, to_seq=10_000), retained=False, source=journal, gateway="gw-a"
        )
        assert len(first["events"]) == MAX_PAGE_EVENTS
        assert first["next_seq"] == MAX_PAGE_EVENTS + 1
        rest = await answer(
            req(from_seq=first["next_seq"], to_seq=10_000),
            retained=False,
            source=journal,
            gateway="gw-a",
        )
        assert [e["seq"] for e in rest["events"]] == list(
            range(MAX_PAGE_EVENTS + 1, MAX_PAGE_EVENTS + 21)
        )
        assert "next_seq" not in rest


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (b"{", "bad_json", "not JSON"),
        (b"[1]", "bad_json", "object"),
        (json.dumps({"id": "", "from_seq": 1, "to_seq": 1}).encode(), "bad_request", "id"),
        (req(from_seq="1", to_seq=2), "bad_request", "from_seq"),
        (req(from_seq=True, to_seq=2), "bad_request", "from_seq"),
        (req(from_seq=0, to_seq=2), "bad_request", "from_seq"),
        (req(from_seq=5, to_seq=2), "bad_request", "to_seq"),
        (req(from_seq=1, to_seq=200_000), "bad_request", "to_seq"),
        (req(from_seq=1, to_seq=2, limit=3), "bad_request", "limit"),
        (req(from_seq=1, to_seq=2, session=7), "bad_request", "session"),
        (req(from_seq=1, to_seq=2, session="other"), "unknown_session", "session"),
        (b" " * 20_000, "too_large", "bytes"),
    ],
)
@pytest.mark.asyncio
async def test_a_bad_request_is_refused_naming_the_field(
    tmp_path: Path, payload: bytes, code: str, field: str
) -> None:
    async with await _journal(tmp_path, 3) as journal:
        data = await answer(payload, retained=False, source=journal, gateway="gw-a")
        _validate(data, journal)
        assert data["status"] == "error"
        assert data["events"] == []
        assert data["error"]["code"] == code
        assert field in data["error"]["message"]


@pytest.mark.asyncio
async def test_a_retained_request_is_never_answered_with_events(tmp_path: Path) -> None:
    async with await _journal(tmp_path, 3) as journal:
        data = await answer(req(from_seq=1, to_seq=3), retained=True, source=journal, gateway="x")
        assert (data["id"], data["error"]["code"], data["events"]) == ("r-1", "retained", [])


@pytest.mark.asyncio
async def test_events_removed_by_retention_are_reported_with_the_oldest_kept(
    tmp_path: Path,
) -> None:
    async with await AsyncJournal.open(tmp_path, gateway_id="gw-a", retention_days=1) as journal:
        old = NOW - timedelta(days=3)
        for n in range(4):
            await journal.record_event("pump-1", started(n + 1), ts=old)
        for _ in range(2):
            await journal.record_event("pump-1", stopped(), ts=NOW)
        while (await journal.run(Journal.prune, NOW)).more:
            pass
        data = await answer(req(from_seq=2, to_seq=6), retained=False, source=journal, gateway="g")
        assert data["error"]["code"] == "not_retained"
        assert data["error"]["oldest_seq"] == 5
        kept = await answer(req(from_seq=5, to_seq=6), retained=False, source=journal, gateway="g")
        assert [e["seq"] for e in kept["events"]] == [5, 6]


@given(st.binary(max_size=300))
def test_any_bytes_get_a_valid_answer_never_an_exception(payload: bytes) -> None:
    """Whatever arrives, the parser answers or refuses with one of the documented codes."""
    codes = SCHEMA["properties"]["data"]["properties"]["error"]["properties"]["code"]["enum"]
    code = None
    try:
        events_request.parse_request(payload, retained=False, session="s")
    except events_request._Refused as refused:
        code = refused.code
    assert code is None or code in codes
