"""Broker outage: mosquitto stopped for several seconds while the pumps change state and raise
alarms, then restarted with its persistence. The daemon runs as a real subprocess; the test
drives the simulators and listens as a persistent QoS 1 subscriber (an MQTT v5 session that
outlives the outage).

Guarantees checked: every event journaled reaches the subscriber exactly once in content and
``seq`` has no gap (the outbox is at-least-once, so a ``seq`` may arrive twice after a
connection loss mid-batch; duplicates carry identical payloads and are deduplicated by ``seq``
here); retained pump state and ``bridge/state`` are right afterwards; while the broker is
down the daemon retries with capped exponential backoff, not in a busy loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.base.paths import journal_path
from daemon.journal import Journal, JournalKind
from tests.reliability.harness import (
    GW,
    ROOT,
    Message,
    bedside,
    daemon_process,
    probe,
    simulators,
    write_toml,
)
from tests.support.procs import Mosquitto

OUTAGE_S = 5.0
HISTORIAN = "historian-1"
# the bridge's reconnect backoff (daemon/mqtt/bridge.py): 0.2 s doubling, jitter 50 %, cap 30 s
BACKOFF_INITIAL_S, BACKOFF_CAP_S = 0.2, 30.0
STAY_USER = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]


def journal_events(data_dir: Path) -> list[dict[str, Any]]:
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        return [row.payload for row in journal.rows(kinds=[JournalKind.EVENT])]
    finally:
        journal.close()


async def until_journaled(data_dir: Path, predicate: Any, timeout: float = 15.0) -> None:
    """Wait until the daemon has journaled an event matching ``predicate`` (a file has no
    event to await: check with a deadline)."""
    deadline = time.monotonic() + timeout
    while not any(predicate(e["event"]) for e in journal_events(data_dir)):
        assert time.monotonic() < deadline, "event never journaled"
        await asyncio.sleep(0.05)


def max_attempts(window_s: float) -> int:
    """Most connection attempts capped exponential backoff with 50 % jitter allows in
    ``window_s``: the shortest delays are half of 0.2, 0.4, 0.8... (capped)."""
    n, spent = 0, 0.0
    while spent <= window_s:
        spent += min(BACKOFF_CAP_S, BACKOFF_INITIAL_S * 2**n) * 0.5
        n += 1
    return n + 1


@pytest.mark.slow
@pytest.mark.asyncio
async def test_events_during_a_broker_outage_reach_a_persistent_subscriber_gapless(
    tmp_path: Path,
) -> None:
    """~5 s without a broker while pump-1's rate is changed at the pump and it occludes and
    pump-2 is stopped at the pump: afterwards the persistent subscriber has every seq exactly
    once in content, retained state shows the new facts, bridge/state is online, and the daemon
    made no more connection attempts than its capped backoff allows."""
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=STAY_USER)
    broker.start()
    data_dir = tmp_path / "data"
    try:
        async with simulators() as bench:
            cfg = bedside(bench, broker_url=broker.url, data_dir=data_dir)
            config = write_toml(tmp_path / "infusiond.toml", cfg)
            # the historian's session starts before the daemon, so it must see every seq from 1;
            # it then goes away: the broker queues its QoS 1 messages (and persists the queue)
            async with probe(
                broker.url, f"{ROOT}/pump/+/event", identifier=HISTORIAN, persistent=True
            ):
                pass
            with daemon_process(config, tmp_path / "daemon.log") as daemon:
                async with probe(broker.url) as live:
                    await live.wait_for(
                        lambda m: m.topic.endswith("bridge/state") and m.json == {"state": "online"}
                    )
                    for pump in ("pump-1", "pump-2"):
                        await live.wait_for(
                            lambda m, pump=pump: (
                                m.topic.endswith(f"pump/{pump}/state")
                                and m.data["connection"] == "online"
                            )
                        )
                broker.stop()
                down_at = time.monotonic()
                log_before = daemon.log_text().count("mqtt connection lost or refused")

                # the world goes on without a broker
                bench.modbus.inject("front_panel_rate", 60.0, unit=1)
                await until_journaled(
                    data_dir,
                    lambda e: e["type"] == "rate_changed" and e.get("source") == "device",
                )
                bench.modbus.inject("occlusion", unit=1)
                await until_journaled(
                    data_dir,
                    lambda e: e["type"] == "alarm_raised" and e["alarm"]["code"] == "occlusion",
                )
                bench.newera.pumps[0].front_panel_stop()
                await until_journaled(data_dir, lambda e: e["type"] == "delivery_stopped")
                await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

                attempts = daemon.log_text().count("mqtt connection lost or refused") - log_before
                outage = time.monotonic() - down_at
                broker.start()
                assert attempts <= max_attempts(outage), (attempts, outage)
                assert attempts >= 2  # it did keep trying

                async with probe(
                    broker.url, f"{ROOT}/pump/+/event", identifier=HISTORIAN, persistent=True
                ) as historian2:
                    journaled = journal_events(data_dir)
                    last = journaled[-1]["seq"]
                    await historian2.wait_for(lambda m: m.json["seq"] == last, timeout=45)
                    received = list(historian2.messages)

                    async with probe(broker.url, f"{ROOT}/#") as fresh:
                        bridge = await fresh.wait_for(
                            lambda m: (
                                m.topic.endswith("bridge/state") and m.json == {"state": "online"}
                            )
                        )
                        assert bridge.retain
                        p1 = await fresh.wait_for(
                            lambda m: (
                                m.topic.endswith("pump/pump-1/state")
                                and m.data["rate"]["value"] == 60.0
                            )
                        )
                        assert "occlusion" in [a["code"] for a in p1.data["alarms"]]
                        p2 = await fresh.wait_for(
                            lambda m: (
                                m.topic.endswith("pump/pump-2/state")
                                and m.data["status"] != "infusing"
                            )
                        )
                        assert p2.retain
                assert daemon.proc is not None
                assert daemon.proc.poll() is None
    finally:
        broker.stop()

    check_exactly_once(received, journal_events(data_dir))


def check_exactly_once(received: list[Message], journaled: list[dict[str, Any]]) -> None:
    """Dedupe by seq (at-least-once outbox); then the set of seqs is 1..last with no gap and
    each event's content is exactly what the journal holds."""
    by_seq: dict[int, dict[str, Any]] = {}
    for msg in received:
        body = msg.json
        assert body["gateway"] == GW
        seq = body["seq"]
        if seq in by_seq:
            assert by_seq[seq] == body, f"seq {seq} delivered twice with different content"
        by_seq[seq] = body
    expected = {e["seq"]: e["event"] for e in journaled}
    assert sorted(by_seq) == list(range(1, max(expected) + 1))
    assert sorted(by_seq) == sorted(expected)
    for seq, body in by_seq.items():
        assert body["data"] == json.loads(json.dumps(expected[seq])), seq
    sessions = {b["session"] for b in by_seq.values()}
    assert len(sessions) == 1
    types = [b["data"]["type"] for b in by_seq.values()]
    assert {"rate_changed", "alarm_raised", "delivery_stopped"} <= set(types)
