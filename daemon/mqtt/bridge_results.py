"""Command results (and library/events responses) waiting for the broker: a bounded in-memory
queue, in order, the oldest dropped first; each result published QoS 1 on its topic and on the
command's response topic when that one is usable (see :func:`response_topic_problem`)."""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.mqtt.bridge_stats import BridgeStats, rarely

log = structlog.get_logger("infusiond.mqtt")

MAX_RESPONSE_TOPIC = 256  # bytes of UTF-8
MAX_TOPIC_BYTES = 65_535  # MQTT's limit; paho raises on a longer topic
RESERVED_ROOT = "infusiond"  # the product's own tree: never a response topic
RESPONSE_IGNORED = "response-topic-ignored"  # user property on a result whose topic was ignored
CORRELATION_IGNORED = "correlation-data-ignored"  # user property: the data was too long
MAX_CORRELATION_BYTES = 1024


@dataclass(frozen=True)
class QueuedResult:
    number: int
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    notes: tuple[tuple[str, str], ...]  # MQTT v5 user properties: what was ignored, and why


def response_topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be used as a response topic, or None when it can."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if not 0 < size <= MAX_RESPONSE_TOPIC:
        return f"must be 1 to {MAX_RESPONSE_TOPIC} bytes"
    if any(ch in topic for ch in "+#\x00"):
        return "contains a wildcard or NUL"
    if topic.startswith("$"):
        return "starts with $"
    if topic.split("/", 1)[0] == RESERVED_ROOT:
        return f"is under {RESERVED_ROOT}/ (the gateways' own topics)"
    return None


class ResultQueue:
    """The results not yet acknowledged by the broker, kept across reconnects."""

    def __init__(self, stats: BridgeStats, *, max_queued: int) -> None:
        self._stats = stats
        self.max_queued = max_queued
        self._results: collections.deque[QueuedResult] = collections.deque()
        self._numbers = itertools.count(1)
        self._changed = asyncio.Event()

    def put(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None,
        correlation_data: bytes | None,
    ) -> None:
        """Queue one result; never blocks, never raises."""
        notes: list[tuple[str, str]] = []
        if correlation_data is not None and len(correlation_data) > MAX_CORRELATION_BYTES:
            notes.append((CORRELATION_IGNORED, f"longer than {MAX_CORRELATION_BYTES} bytes"))
            correlation_data = None
        if response_topic is not None:
            ignored = response_topic_problem(response_topic)
            if ignored is not None:
                self._stats.response_topics_ignored += 1
                if rarely(self._stats.response_topics_ignored):
                    log.warning(
                        "response topic ignored",
                        why=ignored,
                        ignored=self._stats.response_topics_ignored,
                    )
                notes.append((RESPONSE_IGNORED, ignored))
                response_topic = None
        if len(self._results) >= self.max_queued:
            self._results.popleft()
            self._stats.results_dropped += 1
            if rarely(self._stats.results_dropped):
                log.warning(
                    "result queue full; oldest dropped", dropped=self._stats.results_dropped
                )
        number = next(self._numbers)
        self._results.append(
            QueuedResult(number, topic, payload, response_topic, correlation_data, tuple(notes))
        )
        self._changed.set()

    async def publish_loop(self, client: aiomqtt.Client, *, v5: bool) -> None:
        """Publish queued results on this connection until it fails (one per-connection task)."""
        while True:
            self._changed.clear()
            if not self._results:
                await self._changed.wait()
                continue
            batch = list(self._results)
            async with asyncio.TaskGroup() as tg:
                for result in batch:
                    props = _result_properties(result) if v5 else None
                    tg.create_task(
                        client.publish(result.topic, result.payload, qos=1, properties=props),
                        name="mqtt-publish-result",
                    )
                    if result.response_topic and result.response_topic != result.topic:
                        tg.create_task(
                            client.publish(
                                result.response_topic, result.payload, qos=1, properties=props
                            ),
                            name="mqtt-publish-response",
                        )
            last = batch[-1].number
            while self._results and self._results[0].number <= last:
                self._results.popleft()
            self._stats.results_published += len(batch)


def _result_properties(result: QueuedResult) -> Properties | None:
    """MQTT v5 PUBLISH properties of a result: correlation data, and what of the command's
    properties was ignored and why (None when there is neither: the common, fast case)."""
    if result.correlation_data is None and not result.notes:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if result.correlation_data is not None:
        props.CorrelationData = result.correlation_data
    if result.notes:
        props.UserProperty = list(result.notes)
    return props
