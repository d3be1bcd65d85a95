"""The gateway's operational figures, for Prometheus (``GET /metrics``) and ``bridge/health``.

:class:`GatewayMetrics` keeps the figures itself (plain counters, updated by hooks in the
gateway and the channels) and exposes them through its own ``prometheus_client``
:class:`~prometheus_client.CollectorRegistry` (never the process-wide one): one source for both
the scrape and the retained ``bridge/health`` payload, so the two always agree.

Metrics (docs/operator-guide.md, "Metrics and health"):

- ``infusiond_polls_total{pump, outcome}`` counter: polls answered (``ok``) or not
  (``failed``);
- ``infusiond_poll_lateness_seconds`` histogram: how late each poll started against its
  schedule (previous start + poll period);
- ``infusiond_commands_total{phase}`` counter: command results by final phase (``rejected``,
  ``needs_confirmation``, ``applied``, ``failed``, ``uncertain``, ``duplicate``);
- ``infusiond_commands_in_flight`` gauge: commands answered ``accepted`` and not yet ended;
- ``infusiond_outbox_depth`` gauge: events journaled and not yet acknowledged by the broker;
- ``infusiond_journal_size_bytes`` gauge: the journal file plus its write-ahead log;
- ``infusiond_broker_reconnects_total`` counter: MQTT connections after the first;
- ``infusiond_pump_last_poll_age_seconds{pump}`` gauge: seconds since each pump's last
  answered poll, computed at scrape time (absent for a pump never polled).

Outbox depth and journal size are read by :meth:`GatewayMetrics.sample` through the journal
(its writer thread, never on the event loop); the gateway calls it every ``SAMPLE_EVERY_S`` and
before each ``bridge/health``. A journal that cannot answer leaves them unknown (absent).
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from daemon.base.payload import JsonObject
from daemon.base.results import CommandResult, Phase
from daemon.journal.records import JournalError

#: upper bounds (seconds) of the poll lateness histogram's buckets
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: result phases that end a command (``accepted`` does not: ``applied``/``failed``/... follows)
FINAL_PHASES = tuple(p.value for p in Phase if p is not Phase.ACCEPTED)
SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics read from the running gateway at scrape time."""

    now: Callable[[], datetime]
    last_polls: Callable[[], Mapping[str, datetime | None]]
    broker_connections: Callable[[], int]
    #: (events in the outbox, journal bytes), e.g. ``AsyncJournal.footprint``
    journal_footprint: Callable[[], Awaitable[tuple[int, int]]] | None = None


@dataclass
class _Lateness:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, late_s: float) -> None:
        late = max(0.0, late_s)
        self.counts[bisect.bisect_left(LATENESS_BUCKETS, late)] += 1
        self.total += 1
        self.sum_s += late

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)``, ending with ``+Inf``."""
        running, out = 0, []
        for bound, count in zip([*map(str, LATENESS_BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class GatewayMetrics:
    """The figures of one gateway and the registry that exposes them (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sources: Sources | None = None  # set by the gateway once it is built
        self.polls: dict[tuple[str, str], int] = {}
        self.lateness = _Lateness()
        self.phases: dict[str, int] = dict.fromkeys(FINAL_PHASES, 0)
        self._in_flight: set[str] = set()
        self.outbox_depth: int | None = None
        self.journal_bytes: int | None = None
        self.registry.register(_Collector(self))

    # -- hooks ---------------------------------------------------------------------------------

    def poll(self, pump_id: str, *, ok: bool, late_s: float | None) -> None:
        """One poll of ``pump_id`` (answered or not) that started ``late_s`` late."""
        key = (pump_id, "ok" if ok else "failed")
        self.polls[key] = self.polls.get(key, 0) + 1
        if late_s is not None:
            self.lateness.observe(late_s)

    def command_result(self, result: CommandResult) -> None:
        """One published command result (its ``phase`` and ``id``)."""
        command_id = result.id
        if result.phase is Phase.ACCEPTED:
            if command_id is not None:
                self._in_flight.add(command_id)
            return
        self.phases[result.phase.value] += 1
        if command_id is not None:
            self._in_flight.discard(command_id)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def sample(self) -> None:
        """Read outbox depth and journal size from the journal (unknown if it cannot say)."""
        read = self.sources.journal_footprint if self.sources is not None else None
        if read is None:
            return
        try:
            self.outbox_depth, self.journal_bytes = await read()
        except (JournalError, OSError):
            self.outbox_depth = self.journal_bytes = None

    # -- derived figures -----------------------------------------------------------------------

    def broker_reconnects(self) -> int:
        connections = self.sources.broker_connections() if self.sources is not None else 0
        return max(0, connections - 1)

    def last_poll_ages(self) -> dict[str, float | None]:
        """Seconds since each pump's last answered poll (None: never polled)."""
        if self.sources is None:
            return {}
        now = self.sources.now()
        return {
            pump: None if at is None else max(0.0, (now - at).total_seconds())
            for pump, at in self.sources.last_polls().items()
        }

    def snapshot(self) -> JsonObject:
        """The figures as the ``data`` of ``infusiond.bridge.health/1`` (published as is)."""
        pumps: dict[str, JsonObject] = {}
        for pump, age in self.last_poll_ages().items():
            pumps[pump] = {"polls_ok": 0, "polls_failed": 0, "last_poll_age_s": _round(age)}
        for (pump, outcome), count in self.polls.items():
            pumps.setdefault(pump, {"polls_ok": 0, "polls_failed": 0, "last_poll_age_s": None})
            pumps[pump][f"polls_{outcome}"] = count
        return {
            "pumps": pumps,
            "poll_lateness": {
                "count": self.lateness.total,
                "sum_s": round(self.lateness.sum_s, 6),
                "buckets": dict(self.lateness.cumulative()),
            },
            "commands": {"by_phase": dict(self.phases), "in_flight": self.in_flight},
            "outbox_depth": self.outbox_depth,
            "journal_size_bytes": self.journal_bytes,
            "broker_reconnects": self.broker_reconnects(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _Collector(Collector):
    """Builds the metric families from :class:`GatewayMetrics` at every scrape."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        polls = CounterMetricFamily(
            "infusiond_polls", "Pump polls by outcome (ok: answered).", labels=["pump", "outcome"]
        )
        for (pump, outcome), count in sorted(m.polls.items()):
            polls.add_metric([pump, outcome], count)
        yield polls
        yield HistogramMetricFamily(
            "infusiond_poll_lateness_seconds",
            "How late each poll started against its schedule.",
            buckets=m.lateness.cumulative(),
            sum_value=m.lateness.sum_s,
        )
        phases = CounterMetricFamily(
            "infusiond_commands", "Command results by final phase.", labels=["phase"]
        )
        for phase, count in m.phases.items():
            phases.add_metric([phase], count)
        yield phases
        yield GaugeMetricFamily(
            "infusiond_commands_in_flight",
            "Commands answered accepted and not yet ended.",
            value=m.in_flight,
        )
        if m.outbox_depth is not None:
            yield GaugeMetricFamily(
                "infusiond_outbox_depth",
                "Events journaled and not yet acknowledged by the broker.",
                value=m.outbox_depth,
            )
        if m.journal_bytes is not None:
            yield GaugeMetricFamily(
                "infusiond_journal_size_bytes",
                "Size of the journal and its write-ahead log.",
                value=m.journal_bytes,
            )
        yield CounterMetricFamily(
            "infusiond_broker_reconnects",
            "MQTT connections to the broker after the first.",
            value=m.broker_reconnects(),
        )
        ages = GaugeMetricFamily(
            "infusiond_pump_last_poll_age_seconds",
            "Seconds since the pump's last answered poll.",
            labels=["pump"],
        )
        for pump, age in sorted(m.last_poll_ages().items()):
            if age is not None:
                ages.add_metric([pump], age)
        yield ages
