"""Two gateways, two bridged mosquittos, real collectors, real PostgreSQL: every event of
every gateway session is stored exactly once, through collector crashes and a broker outage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fleet.topology import (
    CollectorProcess,
    assert_store_matches_journals,
    bridged_brokers,
    collectors,
    emit,
    expected,
    running_gateway,
    wait_for_events,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_one_collector_killed_and_a_ward_broker_outage_lose_and_duplicate_nothing(
    tmp_path: Path, postgres_dsn: str
) -> None:
    with bridged_brokers(tmp_path) as (ward, central):
        async with (
            running_gateway(tmp_path, "gw-a", ward) as gw_a,
            running_gateway(tmp_path, "gw-b", ward) as gw_b,
        ):
            gateways = [gw_a, gw_b]
            collector = CollectorProcess(
                central, postgres_dsn, "collector-1", log_path=tmp_path / "c1.log"
            )
            with collectors(collector):
                await asyncio.gather(emit(gw_a, 150), emit(gw_b, 150))
                collector.kill()  # mid-stream: whatever it had not committed is not acked
                await asyncio.gather(emit(gw_a, 100), emit(gw_b, 100))
                collector.start()
                await wait_for_events(postgres_dsn, expected(gateways))
                ward.stop()  # outage: the gateways keep journaling into their outboxes
                await asyncio.gather(emit(gw_a, 50), emit(gw_b, 50))
                ward.start()
                await asyncio.gather(emit(gw_a, 50), emit(gw_b, 50))
                await wait_for_events(postgres_dsn, expected(gateways))
            await assert_store_matches_journals(postgres_dsn, gateways)


async def test_two_collectors_in_a_group_store_each_event_once_across_a_crash_and_an_outage(
    tmp_path: Path, postgres_dsn: str
) -> None:
    with bridged_brokers(tmp_path) as (ward, central):
        async with (
            running_gateway(tmp_path, "gw-a", ward) as gw_a,
            running_gateway(tmp_path, "gw-b", ward) as gw_b,
        ):
            gateways = [gw_a, gw_b]
            first = CollectorProcess(
                central, postgres_dsn, "collector-1", group="ingest", log_path=tmp_path / "c1.log"
            )
            second = CollectorProcess(
                central, postgres_dsn, "collector-2", group="ingest", log_path=tmp_path / "c2.log"
            )
            with collectors(first, second):
                await asyncio.gather(emit(gw_a, 200), emit(gw_b, 200))
                second.kill()
                await asyncio.gather(emit(gw_a, 100), emit(gw_b, 100))
                second.start()
                await asyncio.gather(emit(gw_a, 100), emit(gw_b, 100))
                await wait_for_events(postgres_dsn, expected(gateways))
                central.stop()  # the ward's bridge queues, the collectors reconnect
                await asyncio.gather(emit(gw_a, 100), emit(gw_b, 100))
                central.start()
                await wait_for_events(postgres_dsn, expected(gateways))
            await assert_store_matches_journals(postgres_dsn, gateways)


async def test_a_collector_started_late_backfills_history_from_the_gateways(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Events published before any collector existed are only in the journals: the retained
    states' seq shows the gap, and the collector asks the gateways for them (in pages)."""
    with bridged_brokers(tmp_path) as (ward, central):
        async with (
            running_gateway(tmp_path, "gw-a", ward) as gw_a,
            running_gateway(tmp_path, "gw-b", ward) as gw_b,
        ):
            gateways = [gw_a, gw_b]
            await asyncio.gather(emit(gw_a, 1200), emit(gw_b, 30))
            with collectors(
                CollectorProcess(
                    central, postgres_dsn, "late-collector", log_path=tmp_path / "c.log"
                )
            ):
                await wait_for_events(postgres_dsn, expected(gateways))
            await assert_store_matches_journals(postgres_dsn, gateways)
