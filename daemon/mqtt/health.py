"""The retained ``bridge/health`` payload: the figures of ``GET /metrics`` as JSON.

Every ``[health] publish_every_s`` (default 60 s) the gateway samples the journal (outbox depth,
size) and publishes :meth:`daemon.mqtt.metrics.GatewayMetrics.snapshot` in an
``infusiond.bridge.health/1`` envelope (docs/schemas), retained, QoS 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemon.base.payload import JsonObject
from daemon.mqtt.metrics import SAMPLE_EVERY_S, GatewayMetrics


async def publish_health(
    metrics: GatewayMetrics, publish: Callable[[JsonObject], None], every_s: float
) -> None:
    """Sample, publish (``publish(data)``), wait ``every_s``; forever."""
    while True:
        await metrics.sample()
        publish(metrics.snapshot())
        await asyncio.sleep(every_s)


async def sample_metrics(metrics: GatewayMetrics, every_s: float = SAMPLE_EVERY_S) -> None:
    """Keep the disk-read figures (outbox depth, journal size) fresh for scrapes; forever."""
    while True:
        await metrics.sample()
        await asyncio.sleep(every_s)
