"""The fleet store against a real PostgreSQL: migrations, idempotent writes, completeness."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from daemon.fleet import gaps
from daemon.fleet.errors import FleetError
from daemon.fleet.migrate import latest_version, migrate
from daemon.fleet.records import BridgeStateRecord
from daemon.fleet.store import (
    Batch,
    Conn,
    GapStatus,
    connect,
    held_seq_ranges,
    iter_command_results,
    iter_events,
    latest_pump_states,
    list_gaps,
    list_gateways,
    list_sessions,
    store_batch,
    store_batch_isolating,
)
from tests.fleet.builders import event, result, state

pytestmark = pytest.mark.asyncio


async def _migrated(dsn: str) -> Conn:
    conn = await connect(dsn)
    await migrate(conn)
    return conn


async def test_migrate_applies_every_version_once_even_when_two_run_together(
    postgres_dsn: str,
) -> None:
    first, second = await connect(postgres_dsn), await connect(postgres_dsn)
    async with first, second:
        applied = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(len(a) for a in applied) == [0, latest_version()]
        assert await migrate(first) == []
        cur = await first.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in await cur.fetchall()] == list(range(1, latest_version() + 1))


async def test_connect_names_the_problem_of_a_bad_dsn() -> None:
    with pytest.raises(FleetError, match="not a valid PostgreSQL DSN"):
        await connect("host=/tmp port=notaport = =")
    with pytest.raises(FleetError, match="cannot connect to PostgreSQL"):
        await connect("host=/nonexistent-dir-for-test port=5432 dbname=x connect_timeout=2")


async def test_a_redelivered_event_result_or_state_is_stored_once(postgres_dsn: str) -> None:
    async with await _migrated(postgres_dsn) as conn:
        batch = Batch(
            events=[event("gw-a", "s1", n) for n in (1, 2, 3)],
            command_results=[result("gw-a", "s1", 3, "c-1", "accepted")],
            pump_states=[state("gw-a", "s1", 3)],
        )
        first = await store_batch(conn, batch)
        assert (first.events_inserted, first.events_duplicate) == (3, 0)
        assert first.command_results_inserted == 1
        assert first.pump_states_inserted == 1
        again = await store_batch(conn, batch)
        assert (again.events_inserted, again.events_duplicate) == (0, 3)
        assert again.command_results_inserted == 0
        assert again.pump_states_inserted == 0
        # a second phase of the same command is a different result
        applied = await store_batch(
            conn, Batch(command_results=[result("gw-a", "s1", 4, "c-1", "applied")])
        )
        assert applied.command_results_inserted == 1
        assert [e.seq async for e in iter_events(conn, gateway="gw-a")] == [1, 2, 3]
        phases = [(r.command_id, r.phase) async for r in iter_command_results(conn)]
        assert phases == [("c-1", "accepted"), ("c-1", "applied")]
        assert await held_seq_ranges(conn, "gw-a", "s1") == [(1, 3)]


async def test_a_record_postgresql_refuses_does_not_block_the_rest_of_its_batch(
    postgres_dsn: str,
) -> None:
    async with await _migrated(postgres_dsn) as conn:
        poison = dataclasses.replace(event("gw-a", "s1", 2), data={"type": "x", "n": "a\x00"})
        batch = Batch(events=[event("gw-a", "s1", 1), poison, event("gw-a", "s1", 3)])
        result, refused = await store_batch_isolating(conn, batch)
        assert result.events_inserted == 2
        assert len(refused) == 1
        assert "EventRecord gw-a/s1/2" in refused[0]
        assert await held_seq_ranges(conn, "gw-a", "s1") == [(1, 1), (3, 3)]


async def test_collectors_storing_overlapping_batches_at_once_do_not_deadlock(
    postgres_dsn: str,
) -> None:
    """Every gateway's rows are written in key order whatever order the batch holds them in."""
    async with await _migrated(postgres_dsn) as one, await connect(postgres_dsn) as two:
        for n in range(1, 15):
            ab = Batch(
                events=[event("gw-a", "s1", n), event("gw-b", "t1", n)],
                pump_states=[state("gw-a", "s1", n), state("gw-b", "t1", n)],
                bridge_states=[BridgeStateRecord("gw-a", "online")],
                command_results=[result("gw-b", "t1", n, f"c{n}", "accepted")],
            )
            ba = Batch(
                events=[event("gw-b", "t1", n), event("gw-a", "s1", n)],
                pump_states=[state("gw-b", "t1", n), state("gw-a", "s1", n)],
                bridge_states=[BridgeStateRecord("gw-b", "online")],
                command_results=[result("gw-b", "t1", n, f"c{n}", "accepted")],
            )
            await asyncio.gather(store_batch(one, ab), store_batch(two, ba))
        assert await held_seq_ranges(one, "gw-a", "s1") == [(1, 14)]
        assert await held_seq_ranges(one, "gw-b", "t1") == [(1, 14)]


async def test_latest_state_keeps_the_newest_whatever_the_arrival_order(postgres_dsn: str) -> None:
    async with await _migrated(postgres_dsn) as conn:
        await store_batch(conn, Batch(pump_states=[state("gw-a", "s1", 7, alarms=2)]))
        await store_batch(conn, Batch(pump_states=[state("gw-a", "s1", 5)]))
        [latest] = await latest_pump_states(conn)
        assert (latest.seq, len(latest.data["alarms"])) == (7, 2)
        # a new journal session replaces the old one's state even with a lower seq
        await store_batch(conn, Batch(pump_states=[state("gw-a", "s2", 1)]))
        [latest] = await latest_pump_states(conn)
        assert (latest.session, latest.seq) == ("s2", 1)


async def test_gaps_are_found_shrunk_by_late_events_and_removed_when_filled(
    postgres_dsn: str,
) -> None:
    async with await _migrated(postgres_dsn) as conn:
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (1, 2, 5, 9)]))
        # a state proves events up to 12 exist
        await store_batch(conn, Batch(pump_states=[state("gw-a", "s1", 12)]))
        ranges = await gaps.refresh_session(conn, "gw-a", "s1", grace=timedelta(0))
        assert ranges == [(3, 4), (6, 8), (10, 12)]
        [session] = await list_sessions(conn)
        assert (session.high_water, session.contiguous_upto, session.events) == (12, 2, 4)
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (3, 4, 6)]))
        assert await gaps.refresh_session(conn, "gw-a", "s1") == [(7, 8), (10, 12)]
        [session] = await list_sessions(conn)
        assert session.contiguous_upto == 6
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (7, 8, 10, 11, 12)]))
        assert await gaps.refresh_session(conn, "gw-a", "s1") == []
        assert await list_gaps(conn) == []
        [session] = await list_sessions(conn)
        assert session.contiguous_upto == 12


async def test_claimed_gaps_back_off_and_are_not_claimed_twice(postgres_dsn: str) -> None:
    async with await _migrated(postgres_dsn) as conn, await connect(postgres_dsn) as other:
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (1, 4)]))
        await gaps.refresh_session(conn, "gw-a", "s1", grace=timedelta(0))
        [claimed] = await gaps.claim_due_gaps(conn, base=timedelta(seconds=30))
        assert (claimed.from_seq, claimed.to_seq, claimed.attempts) == (2, 3, 1)
        assert await gaps.claim_due_gaps(other) == []  # backed off


async def test_a_permanent_gap_is_visible_settled_and_never_requested(postgres_dsn: str) -> None:
    async with await _migrated(postgres_dsn) as conn:
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (1, 6)]))
        await gaps.refresh_session(conn, "gw-a", "s1", grace=timedelta(0))
        await gaps.mark_permanent(conn, "gw-a", "s1", 2, 3, reason="not_retained: oldest seq is 4")
        assert await gaps.refresh_session(conn, "gw-a", "s1", grace=timedelta(0)) == [(4, 5)]
        [permanent] = await list_gaps(conn, status=GapStatus.PERMANENT)
        assert (permanent.from_seq, permanent.to_seq) == (2, 3)
        assert permanent.last_error == "not_retained: oldest seq is 4"
        claimed = await gaps.claim_due_gaps(conn)
        assert [(g.from_seq, g.to_seq) for g in claimed] == [(4, 5)]
        await store_batch(conn, Batch(events=[event("gw-a", "s1", n) for n in (4, 5)]))
        assert await gaps.refresh_session(conn, "gw-a", "s1") == []
        [session] = await list_sessions(conn)
        assert session.contiguous_upto == 6


async def test_gateway_summary_lists_state_seq_gaps_and_alarms(postgres_dsn: str) -> None:
    async with await _migrated(postgres_dsn) as conn:
        await store_batch(
            conn,
            Batch(
                events=[event("gw-a", "s1", n) for n in (1, 3)],
                pump_states=[state("gw-a", "s1", 3, alarms=1), state("gw-a", "s1", 3, "p2", 2)],
                bridge_states=[BridgeStateRecord("gw-a", "online")],
            ),
        )
        await store_batch(conn, Batch(events=[event("gw-b", "t1", 1)]))
        await gaps.refresh_session(conn, "gw-a", "s1")
        a, b = await list_gateways(conn)
        assert (a.gateway, a.bridge_state, a.session, a.last_seq) == ("gw-a", "online", "s1", 3)
        assert (a.open_gaps, a.missing_seqs, a.active_alarms) == (1, 1, 3)
        assert (b.gateway, b.bridge_state, b.last_seq, b.open_gaps) == ("gw-b", None, 1, 0)
