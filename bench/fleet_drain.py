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
from datetime import datetime
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: central broker lines for a pre-load: room for every queued event (mosquitto keeps 1000)
CENTRAL_CONF = ("max_queued_messages 1000000",)
QUIET = logging.getLogger("bench.fleet_drain.mqtt")  # not "N pending publish calls"
QUIET.setLevel(logging.ERROR)
CHUNK = 1000  # publishes in flight at once while pre-loading
RAW_TOPIC = "bench/raw/event"
RAW_CLIENT = "bench-raw-subscriber"
C_CLIENT = "bench-c-subscriber"
RAW_TIMEOUT_S = 120.0


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
