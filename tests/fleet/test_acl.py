"""The shipped broker ACL (systemd/mosquitto.acl) lets a fleet collector do its job: read
events through a shared subscription, ask a gateway for missed events and read the answer."""

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
from tests.support.procs import Mosquitto, shipped_acl_broker

LOGINS = {"infusiond-gw-a": "gw-1", "fleet-collector": "fleet-2"}

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with shipped_acl_broker(tmp_path, LOGINS, "gw-a") as broker:
        yield broker


async def test_the_collector_role_collects_live_and_backfills_under_the_shipped_acl(
    tmp_path: Path, acl_broker: Mosquitto, postgres_dsn: str
) -> None:
    gw_login = ("infusiond-gw-a", LOGINS["infusiond-gw-a"])
    async with running_gateway(tmp_path, "gw-a", acl_broker, login=gw_login) as gateway:
        await emit(gateway, 30)  # before any collector: only a backfill can bring these
        collector = CollectorProcess(
            acl_broker,
            postgres_dsn,
            "collector-acl",
            group="ingest",
            log_path=tmp_path / "c.log",
            login=("fleet-collector", LOGINS["fleet-collector"]),
        )
        with collectors(collector):
            await wait_for_events(postgres_dsn, expected([gateway]))
            await asyncio.gather(emit(gateway, 30))  # live, through $share/ingest/...
            await wait_for_events(postgres_dsn, expected([gateway]))
        await assert_store_matches_journals(postgres_dsn, [gateway])
