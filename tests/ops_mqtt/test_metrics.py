"""``gateway.metrics.registry`` scraped as Prometheus text after real polls, commands and a broker
restart (the web server serves the same text at GET /metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.mqtt.bridge import BridgeState
from daemon.mqtt.metrics import LATENESS_BUCKETS, GatewayMetrics
from sim_devices.modbus_pump import Fault
from tests.e2e.harness import command, dose, running_bedside
from tests.support.procs import Mosquitto

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the Prometheus text format: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_each_gateway_has_its_own_registry() -> None:
    """Metrics never go to prometheus_client's process-wide registry."""
    first, second = GatewayMetrics(), GatewayMetrics()
    first.poll("pump-1", ok=True, late_s=0.002)
    assert first.registry is not REGISTRY
    assert value(scrape(first.registry), "infusiond_polls_total", pump="pump-1", outcome="ok") == 1
    assert ("infusiond_polls_total", (("outcome", "ok"), ("pump", "pump-1"))) not in scrape(
        second.registry
    )
    assert "infusiond_polls" not in {m.name for m in REGISTRY.collect()}


def test_lateness_histogram_counts_each_poll_in_its_bucket() -> None:
    """Cumulative buckets: 1 ms late is <= 0.001; 30 ms is first counted at 0.05; sum adds up."""
    metrics = GatewayMetrics()
    for late in (0.001, 0.03, -0.01):  # a poll early by 10 ms counts as on time
        metrics.poll("p", ok=True, late_s=late)
    samples = scrape(metrics.registry)
    bucket = "infusiond_poll_lateness_seconds_bucket"
    assert value(samples, bucket, le="0.001") == 2
    assert value(samples, bucket, le="0.025") == 2
    assert value(samples, bucket, le="0.05") == 3
    assert value(samples, bucket, le="+Inf") == 3
    assert value(samples, "infusiond_poll_lateness_seconds_count") == 3
    assert value(samples, "infusiond_poll_lateness_seconds_sum") == pytest.approx(0.031)
    assert len([k for k in samples if k[0] == bucket]) == len(LATENESS_BUCKETS) + 1


@pytest.mark.asyncio
async def test_scrape_after_real_polls_a_titration_a_rejection_and_a_broker_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Polls per pump, lateness, one applied and one rejected command, none in flight, a
    journal size and outbox depth, per-pump last poll age, and one reconnect after the broker
    restarted: all in the registry the web server serves."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        gateway = bed.gateway
        ok = command(dose=dose(0.06))
        await bed.watch.send("pump-1", ok)
        await bed.watch.result(ok["id"], "accepted")
        assert value(scrape(gateway.metrics.registry), "infusiond_commands_in_flight") in (0, 1)
        await bed.watch.result(ok["id"], "applied")
        too_much = command(dose=dose(5))
        await bed.watch.send("pump-1", too_much)
        await bed.watch.result(too_much["id"], "rejected")
        mosquitto.restart()
        await gateway.bridge.wait_state(BridgeState.ONLINE, connections=2)
        await gateway.metrics.sample()
        samples = scrape(gateway.metrics.registry)
    for pump in ("pump-1", "pump-2"):
        assert value(samples, "infusiond_polls_total", pump=pump, outcome="ok") > 0
        age = value(samples, "infusiond_pump_last_poll_age_seconds", pump=pump)
        assert 0 <= age < 5
    assert value(samples, "infusiond_poll_lateness_seconds_count") > 0
    assert value(samples, "infusiond_commands_total", phase="applied") == 1
    assert value(samples, "infusiond_commands_total", phase="rejected") == 1
    assert value(samples, "infusiond_commands_total", phase="failed") == 0
    assert value(samples, "infusiond_commands_in_flight") == 0
    assert value(samples, "infusiond_broker_reconnects_total") == 1
    assert value(samples, "infusiond_journal_size_bytes") > 0
    assert value(samples, "infusiond_outbox_depth") >= 0


@pytest.mark.asyncio
async def test_failed_polls_are_counted_as_failed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A pump that stops answering shows polls with outcome failed."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        seen = len(bed.watch.messages)
        bed.modbus.inject(Fault.NO_ANSWER, unit=1)
        await bed.watch.wait_for(
            lambda m: m.topic.endswith("pump-1/availability") and m.payload == b"offline",
            after=seen,
        )
        samples = scrape(bed.gateway.metrics.registry)
    assert value(samples, "infusiond_polls_total", pump="pump-1", outcome="failed") >= 1
