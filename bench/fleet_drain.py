"""Capacity figures of ``bench.fleet_ingest``: drain a pre-loaded broker queue.

A collector's sustained ingest is measured at saturation, not at an offered rate: while its
persistent session is offline, the central broker queues ``N`` events for it (published flat
out, QoS 1, straight to the central broker: its PUBACK means the message is in the session's
queue); then the collector starts and drains them with no publisher running. Its rate is the
events committed after its first commit, divided by the time from the first commit to the
last (``pg_xact_commit_timestamp``), so process start-up is not counted.

The same measure for a plain paho subscriber (auto PUBACK, nothing stored) draining the same
number of the same bytes gives the rate at which Python's MQTT client alone takes messages
from that broker, in the same run: the ceiling of any collector built on paho. The same for
``mosquitto_sub`` (C, libmosquitto; process start and connect counted) gives the broker's
own delivery rate to one client.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.harness import progress
from daemon.base.timefmt import format_ts, parse_ts
from daemon.fleet.collector import CollectorConfig
from daemon.fleet.store import NOTIFY_CHANNEL
from tests.fleet.topology import CollectorProcess

if TYPE_CHECKING:
    from bench.fleet_ingest import SyntheticGateway

#: central broker lines for a pre-load: room for every queued event (mosquitto keeps 1000)
CENTRAL_CONF = ("max_queued_messages 1000000",)
QUIET = logging.getLogger("bench.fleet_drain.mqtt")  # not "N pending publish calls"
QUIET.setLevel(logging.ERROR)
CHUNK = 1000  # publishes in flight at once while pre-loading
RAW_TOPIC = "bench/raw/event"
RAW_CLIENT = "bench-raw-subscriber"
C_CLIENT = "bench-c-subscriber"
RAW_TIMEOUT_S = 120.0
STORE_TIMEOUT_S = 120.0


async def preload(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``messages`` (topic, payload) at QoS 1 as fast as the broker acknowledges."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="bench-preload",
        logger=QUIET,
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=CHUNK,
    ) as client:
        for start in range(0, len(messages), CHUNK):
            async with asyncio.TaskGroup() as tg:
                for topic, body in messages[start : start + CHUNK]:
                    tg.create_task(client.publish(topic, body, qos=1), name="bench-preload")


# Rows committed in a drain: every event of the pre-load (they share one ts); the rate counts
# those committed after the first commit, over first commit -> last commit.
_DRAIN = """
WITH c AS (SELECT pg_xact_commit_timestamp(xmin) AS at FROM events WHERE ts = %(ts)s)
SELECT count(*), count(*) FILTER (WHERE at = (SELECT min(at) FROM c)),
       extract(epoch FROM max(at) - min(at)), count(DISTINCT at)
FROM c
"""


def drain_figures(dsn: str, ts: datetime) -> dict[str, Any]:
    """Events/s of a drain of the pre-loaded events (``ts``); its transactions too."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_DRAIN, {"ts": ts}).fetchone()
    assert row is not None
    count, first, seconds, commits = row
    eps = (count - first) / float(seconds) if seconds else None
    return {
        "events": count,
        "eps": None if eps is None else round(eps, 1),
        "seconds": None if seconds is None else round(float(seconds), 2),
        "commits": commits,
    }


def _raw_client(port: int, receive_maximum: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=RAW_CLIENT, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_maximum
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    return client


def raw_subscribe(port: int, receive_maximum: int) -> None:
    """Create the raw subscriber's persistent session (subscribed), then leave."""
    subscribed: list[bool] = []
    client = _raw_client(port, receive_maximum)
    client.on_subscribe = lambda *_args: subscribed.append(True)
    client.subscribe(RAW_TOPIC, qos=1)
    deadline = time.monotonic() + RAW_TIMEOUT_S
    while not subscribed and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    if not subscribed:
        msg = f"raw subscriber: no SUBACK in {RAW_TIMEOUT_S} s"
        raise RuntimeError(msg)


def raw_drain(port: int, count: int, receive_maximum: int) -> dict[str, Any]:
    """Connect the raw subscriber and take ``count`` queued messages (auto PUBACK); its rate
    over first message -> last message (blocking: run it in a thread)."""
    times: list[float] = []

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        times.append(time.perf_counter())

    client = _raw_client(port, receive_maximum)
    client.on_message = on_message
    deadline = time.monotonic() + RAW_TIMEOUT_S
    while len(times) < count and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    if len(times) < count:
        msg = f"raw subscriber: {len(times)} of {count} queued messages in {RAW_TIMEOUT_S} s"
        raise RuntimeError(msg)
    seconds = times[-1] - times[0]
    return {"events": count, "eps": round((count - 1) / seconds, 1) if seconds else None}


def _c_argv(port: int) -> list[str]:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        msg = "mosquitto_sub not found (scripts/bootstrap.sh installs mosquitto-clients)"
        raise RuntimeError(msg)
    return [
        *(exe, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-i", C_CLIENT),
        *("-c", "-x", "3600", "-q", "1", "-t", RAW_TOPIC),
    ]


def c_subscribe(port: int) -> None:
    """Create ``mosquitto_sub``'s persistent session (subscribed), then leave."""
    subprocess.run([*_c_argv(port), "-E"], check=True, timeout=RAW_TIMEOUT_S)


def c_drain(port: int, count: int) -> dict[str, Any]:
    """``mosquitto_sub`` takes ``count`` queued messages; its rate over its whole run."""
    t0 = time.perf_counter()
    subprocess.run(
        [*_c_argv(port), "-C", str(count)],
        check=True,
        timeout=RAW_TIMEOUT_S,
        stdout=subprocess.DEVNULL,
    )
    return {"events": count, "eps": round(count / (time.perf_counter() - t0), 1)}


async def wait_stored(dsn: str, expected: int, timeout: float) -> None:
    """Until the table holds ``expected`` events (woken by the collector's NOTIFY after each
    commit)."""
    held = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    cur = await conn.execute("SELECT count(*) FROM events")
                    held = int((await cur.fetchone() or (0,))[0])
                    if held >= expected:
                        return
                    async for _ in conn.notifies(timeout=1.0, stop_after=1):
                        pass
        except TimeoutError:
            raise RuntimeError(f"only {held} of {expected} events stored in {timeout} s") from None


def _next_events(
    gateways: list[SyntheticGateway], count: int
) -> tuple[datetime, list[tuple[str, bytes]]]:
    """``count`` next events (gateways in turn), all with one ``ts``: (that ts as stored, them)."""
    now = datetime.now(UTC)
    return parse_ts(format_ts(now)), [
        gateways[i % len(gateways)].next_event(now) for i in range(count)
    ]


async def _drain(
    count: int,
    dsn: str,
    central: Any,
    collectors: list[CollectorProcess],
    gateways: list[SyntheticGateway],
) -> dict[str, Any]:
    """Pre-load ``count`` events for the (stopped) collectors' sessions, start them all
    at once and wait for the last row; the drain's figures."""
    ts, messages = _next_events(gateways, count)
    await preload(central.port, messages)
    progress(f"fleet_ingest: {count} events queued for {len(collectors)} collector(s)")
    async with asyncio.TaskGroup() as tg:
        for c in collectors:
            tg.create_task(asyncio.to_thread(c.start), name=f"bench-start-{c.client_id}")
    await wait_stored(dsn, sum(g.seq for g in gateways), STORE_TIMEOUT_S)
    for c in collectors:
        c.stop()
    return drain_figures(dsn, ts)


async def capacity(
    count: int,
    work: Path,
    dsn: str,
    central: Any,
    collector: CollectorProcess,
    gateways: list[SyntheticGateway],
) -> dict[str, Any]:
    """Sustained ingest at saturation: one collector, then two in one shared group, each
    draining a pre-loaded queue; then a raw paho subscriber draining the same bytes."""
    collector.stop()  # a clean stop: its persistent session stays, and queues
    one = await _drain(count, dsn, central, [collector], gateways)
    progress(f"fleet_ingest: 1 collector drained {one}")
    group = [
        CollectorProcess(
            central, dsn, client_id=f"bench-group-{n}", group="bench", log_path=work / f"g{n}.log"
        )
        for n in (1, 2)
    ]
    for c in group:  # their sessions and shared subscriptions, then offline
        await asyncio.to_thread(c.start)
        c.stop()
    two = await _drain(count, dsn, central, group, gateways)
    progress(f"fleet_ingest: 2 collectors drained {two}")
    in_flight = CollectorConfig("-", 0, "-", "-").in_flight
    await asyncio.to_thread(raw_subscribe, central.port, in_flight)
    await asyncio.to_thread(c_subscribe, central.port)
    bodies = [p for g in gateways for p in g.payloads]
    raw_messages = [(RAW_TOPIC, bodies[i % len(bodies)]) for i in range(count)]
    await preload(central.port, raw_messages)
    raw = await asyncio.to_thread(raw_drain, central.port, count, in_flight)
    progress(f"fleet_ingest: raw subscriber drained {raw}")
    c_sub = await asyncio.to_thread(c_drain, central.port, count)
    progress(f"fleet_ingest: mosquitto_sub drained {c_sub}")
    return {"drain_1": one, "drain_2": two, "raw_subscriber": raw, "mosquitto_sub": c_sub}
