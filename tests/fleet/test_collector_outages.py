"""A PostgreSQL outage under a running collector: nothing is acknowledged before it is
committed, so nothing is lost and nothing is stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.topology import (
    CollectorProcess,
    assert_store_matches_journals,
    collectors,
    emit,
    expected,
    running_gateway,
    wait_for_events,
)
from tests.support.postgres import PostgresServer, find_bindir
from tests.support.procs import Mosquitto

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own (it is stopped and started mid-test)."""
    server = PostgresServer(find_bindir())
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def test_a_postgresql_outage_loses_and_duplicates_nothing(
    tmp_path: Path, mosquitto: Mosquitto, own_postgres: PostgresServer
) -> None:
    dsn = own_postgres.create_database()
    async with running_gateway(tmp_path, "gw-a", mosquitto) as gateway:
        collector = CollectorProcess(mosquitto, dsn, "collector-pg", log_path=tmp_path / "c.log")
        with collectors(collector):
            await emit(gateway, 100)
            await wait_for_events(dsn, expected([gateway]))
            await asyncio.to_thread(own_postgres.stop_server)
            await emit(gateway, 100)  # received, never committed: never acknowledged
            await asyncio.to_thread(own_postgres.start_server)
            await emit(gateway, 50)
            await wait_for_events(dsn, expected([gateway]))
        await assert_store_matches_journals(dsn, [gateway])
        assert b"collector_link_lost" in (tmp_path / "c.log").read_bytes()
