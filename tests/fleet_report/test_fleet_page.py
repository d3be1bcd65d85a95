"""``infusiond fleet serve``: the fleet page and its ``/api/fleet`` over a real PostgreSQL
store holding two gateways (one online with an open gap and a pump alarm, one offline with
a permanent gap), read over real HTTP and rendered by headless Chromium."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.fleet import gaps
from daemon.fleet.errors import FleetError
from daemon.fleet.migrate import migrate
from daemon.fleet.overview import held_ranges
from daemon.fleet.records import Batch, BridgeStateRecord
from daemon.fleet.serve import parse_listen, serving
from daemon.fleet.store import connect, store_batch
from tests.fleet.builders import event, state
from tests.web.chromium import CHROMIUM, chromium_page, navigate

DASH = "\N{EN DASH}"  # the page writes ranges as 1\N{EN DASH}5
HAS_CHROMIUM = shutil.which("chromium") is not None or Path(CHROMIUM).exists()


async def two_gateways(dsn: str) -> None:
    """gw-a: online, seqs 1-5 and 8-10 held (6-7 an open gap), pump-1 with one high alarm;
    gw-b: offline, seqs 3-4 held, 1-2 gone from its journal (a permanent gap)."""
    conn = await connect(dsn)
    try:
        await migrate(conn)
        await store_batch(
            conn,
            Batch(
                events=[event("gw-a", "s-a", n) for n in (1, 2, 3, 4, 5, 8, 9, 10)]
                + [event("gw-b", "s-b", n) for n in (3, 4)],
                pump_states=[
                    state("gw-a", "s-a", 10, "pump-1", alarms=1),
                    state("gw-a", "s-a", 10, "pump-2"),
                    state("gw-b", "s-b", 4, "pump-1"),
                ],
                bridge_states=[
                    BridgeStateRecord("gw-a", "online"),
                    BridgeStateRecord("gw-b", "offline"),
                ],
            ),
        )
        assert await gaps.refresh_session(conn, "gw-a", "s-a", grace=timedelta(0)) == [(6, 7)]
        assert await gaps.refresh_session(conn, "gw-b", "s-b", grace=timedelta(0)) == [(1, 2)]
        await gaps.mark_permanent(conn, "gw-b", "s-b", 1, 2, reason="not_retained")
    finally:
        await conn.close()


async def get(url: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await (response.json() if "json" in response.content_type else response.text())
        return response.status, dict(response.headers), body


@pytest.mark.asyncio
async def test_api_lists_every_gateway_with_state_gaps_alarms_and_the_page_renders_them(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """/api/fleet: gw-a online, last seq 10, held 1-5 and 8-10, 6-7 missing (open), pump-1's
    alarm; gw-b offline with 1-2 missing for good. The page (strict CSP, its own files only)
    shows the same in Chromium."""
    await two_gateways(postgres_dsn)
    async with serving(postgres_dsn, "127.0.0.1", 0) as port:
        base = f"http://127.0.0.1:{port}"
        status, headers, doc = await get(f"{base}/api/fleet")
        assert status == 200
        gw_a, gw_b = doc["gateways"]
        assert (gw_a["gateway"], gw_a["state"], gw_a["session"]) == ("gw-a", "online", "s-a")
        assert gw_a["last_seq"] == 10
        assert gw_a["held"] == [[1, 5], [8, 10]]
        assert [(g["from"], g["to"], g["status"]) for g in gw_a["missing"]] == [(6, 7, "open")]
        assert gw_a["active_alarms"] == 1
        [alarmed] = [p for p in gw_a["pumps"] if p["alarms"]]
        assert (alarmed["pump_id"], alarmed["alarms"][0]["code"]) == ("pump-1", "A0")
        assert (gw_b["gateway"], gw_b["state"], gw_b["held"]) == ("gw-b", "offline", [[3, 4]])
        assert [(g["from"], g["to"], g["status"]) for g in gw_b["missing"]] == [(1, 2, "permanent")]
        assert doc["totals"] == {
            "gateways": 2,
            "online": 1,
            "offline": 1,
            "missing_seqs": 4,
            "active_alarms": 1,
        }

        status, headers, html = await get(f"{base}/")
        assert status == 200
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "http" not in html  # nothing fetched from elsewhere
        async with aiohttp.ClientSession() as session, session.post(f"{base}/api/fleet") as r:
            assert r.status == 405

        if not HAS_CHROMIUM:
            pytest.fail("chromium is missing: scripts/bootstrap.sh --test installs it")
        async with chromium_page(tmp_path) as page:
            await navigate(page, f"{base}/")
            await page.wait_for("document.body.dataset.loaded")
            text = await page.evaluate("document.body.innerText")
            rows = await page.evaluate(
                "Array.from(document.querySelectorAll('#fleet tbody tr'))"
                ".map(r => [r.dataset.gateway, r.innerText])"
            )
            assert page.console_errors == []
    assert "2 gateways: 1 online, 1 offline; 4 events missing; 1 active alarms" in text
    by_gateway = dict(rows)
    assert "online" in by_gateway["gw-a"]
    assert f"1{DASH}5, 8{DASH}10" in by_gateway["gw-a"]
    assert f"6{DASH}7 (open)" in by_gateway["gw-a"]
    assert "pump-1: A0 (high)" in by_gateway["gw-a"]
    assert "offline" in by_gateway["gw-b"]
    assert f"1{DASH}2 (permanent)" in by_gateway["gw-b"]


@pytest.mark.asyncio
async def test_api_answers_503_naming_the_problem_while_the_store_cannot_be_read(
    postgres_dsn: str,
) -> None:
    """A database without the fleet schema: 503 with an error, and the server keeps serving."""
    async with serving(postgres_dsn, "127.0.0.1", 0) as port:
        status, _headers, doc = await get(f"http://127.0.0.1:{port}/api/fleet")
        assert status == 503
        assert "reading the fleet store failed" in doc["error"]
        status, _headers, _html = await get(f"http://127.0.0.1:{port}/")
        assert status == 200


@pytest.mark.parametrize("bad", ["8470", "host:", ":80", "host:99999", "host:http"])
def test_listen_must_be_host_and_port(bad: str) -> None:
    """--listen is HOST:PORT with a port in 0..65535; anything else names --listen."""
    with pytest.raises(FleetError, match="--listen"):
        parse_listen(bad)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:8470") == ("0.0.0.0", 8470)


@given(
    st.integers(0, 60),
    st.lists(st.tuples(st.integers(1, 70), st.integers(0, 5)), max_size=6),
)
def test_held_and_missing_ranges_partition_one_to_last_seq(
    last: int, spans: list[tuple[int, int]]
) -> None:
    """Held ranges are sorted, disjoint, inside 1..last, and with the missing ones cover it."""
    missing = [(lo, lo + width) for lo, width in spans]
    held = held_ranges(last, missing)
    seqs = [n for lo, hi in held for n in range(lo, hi + 1)]
    assert seqs == sorted(set(seqs))
    gone = {n for lo, hi in missing for n in range(lo, hi + 1)}
    assert set(seqs) == set(range(1, last + 1)) - gone
