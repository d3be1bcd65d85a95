"""What the MQTT bridge counts (connections, publishes, drops, link faults), and how it logs a
flood without flooding the log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BridgeStats:
    """The bridge's counters (``MqttBridge.stats``; Prometheus and ``bridge/health`` read them)."""

    connections: int = 0
    events_published: int = 0
    results_published: int = 0
    retained_published: int = 0
    commands_dropped: int = 0
    results_dropped: int = 0
    response_topics_ignored: int = 0
    link_faults: int = 0
    last_error: str | None = None


def rarely(count: int) -> bool:
    """True for the 1st, 2nd, 4th, 8th... occurrence: a flood shows in the log without
    flooding it."""
    return count & (count - 1) == 0
