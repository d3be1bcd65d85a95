"""Backfill against a real PostgreSQL: what a collector asks for, and what it does with the
gateway's answers (pages, events gone for good, refusals)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from daemon.fleet.backfill import Backfill
from daemon.fleet.migrate import migrate
from daemon.fleet.records import Batch, EventsResponse, ResponseError
from daemon.fleet.store import Conn, GapStatus, connect, list_gaps, store_batch
from tests.fleet.builders import event

pytestmark = pytest.mark.asyncio


class Requests(list[dict[str, Any]]):
    """Publishes of the backfill, as the gateway would receive them."""

    async def publish(self, topic: str, payload: bytes) -> None:
        assert topic == "infusiond/gw-a/bridge/request/events"
        self.append(json.loads(payload))


@pytest_asyncio.fixture
async def conn(postgres_dsn: str) -> AsyncIterator[Conn]:
    async with await connect(postgres_dsn) as conn:
        await migrate(conn)
        yield conn


async def _with_gap(conn: Conn, held: tuple[int, ...]) -> tuple[Backfill, Requests]:
    requests = Requests()
    backfill = Backfill(conn, requests.publish, requester="c1", grace=timedelta(0))
    await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in held]))
    await backfill.refresh({("gw-a", "s1")})
    assert await backfill.tick() == 1
    return backfill, requests


def _answer(request: dict[str, Any], **data: Any) -> EventsResponse:
    ok = "error" not in data
    return EventsResponse(
        gateway="gw-a",
        id=request["id"],
        ok=ok,
        events=(),
        next_seq=data.get("next_seq"),
        error=ResponseError.from_json(data["error"], "answer") if "error" in data else None,
    )


async def test_a_gap_is_requested_once_with_its_session(conn: Conn) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    [request] = requests
    assert {k: request[k] for k in ("from_seq", "to_seq", "session")} == {
        "from_seq": 2,
        "to_seq": 5,
        "session": "s1",
    }
    assert await backfill.tick() == 0  # claimed: backing off, not asked again at once


async def test_pages_are_followed_from_next_seq_until_the_gap_is_filled(conn: Conn) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (2, 3)]))
    await backfill.on_response(_answer(requests[0], next_seq=4))
    assert (requests[1]["from_seq"], requests[1]["to_seq"]) == (4, 5)
    await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (4, 5)]))
    await backfill.on_response(_answer(requests[1]))
    assert await list_gaps(conn) == []
    assert len(requests) == 2


async def test_events_past_retention_become_a_permanent_gap_and_the_rest_is_asked(
    conn: Conn,
) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    await backfill.on_response(
        _answer(requests[0], error={"code": "not_retained", "message": "m", "oldest_seq": 4})
    )
    assert (requests[1]["from_seq"], requests[1]["to_seq"]) == (4, 5)
    [permanent] = await list_gaps(conn, status=GapStatus.PERMANENT)
    assert (permanent.from_seq, permanent.to_seq) == (2, 3)
    assert permanent.last_error is not None
    assert permanent.last_error.startswith("not_retained")
    await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (4, 5)]))
    await backfill.on_response(_answer(requests[1]))
    assert [g.status for g in await list_gaps(conn)] == [GapStatus.PERMANENT]


async def test_a_journal_created_anew_makes_the_whole_gap_permanent(conn: Conn) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    await backfill.on_response(
        _answer(requests[0], error={"code": "unknown_session", "message": "gone"})
    )
    [gap] = await list_gaps(conn)
    assert (gap.from_seq, gap.to_seq, gap.status) == (2, 5, GapStatus.PERMANENT)
    assert len(requests) == 1
    assert await backfill.tick() == 0  # never asked again


async def test_a_refusal_keeps_the_gap_open_with_the_reason(conn: Conn) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    await backfill.on_response(
        _answer(requests[0], error={"code": "bad_request", "message": "to_seq: too wide"})
    )
    [gap] = await list_gaps(conn)
    assert (gap.status, gap.last_error) == (GapStatus.OPEN, "bad_request: to_seq: too wide")


async def test_answers_to_other_collectors_requests_are_not_followed_up(conn: Conn) -> None:
    backfill, requests = await _with_gap(conn, (1, 6))
    other = {"id": "someone-else-1"}
    await backfill.on_response(_answer(other, next_seq=3))
    await backfill.on_response(_answer(other, error={"code": "unknown_session", "message": ""}))
    assert len(requests) == 1
    [gap] = await list_gaps(conn)
    assert gap.status is GapStatus.OPEN
