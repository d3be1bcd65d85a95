"""Hostile peers against the real MLLP listener and the real monitor simulator (loopback TCP).

Vitals can be neither spoofed by a future timestamp nor starved of listener slots: the
monitor's readings keep reaching the daemon's vitals state in both cases. The gateway clock is
a fixed, hand-advanced clock; the monitor stamps its messages with the same clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import pytest_asyncio

from daemon.core.vitals import VitalsState, rfc3339_ms
from drivers.backoff import Backoff
from drivers.hl7 import (
    Ack,
    AckCode,
    Parameter,
    ReceiverConfig,
    VitalsListener,
    VitalsSample,
    build_oru,
)
from sim_devices.clock import SimClock
from sim_devices.monitor import AckResult, Monitor
from sim_devices.patient_model import Doses
from sim_devices.scenario import load_scenario
from tests.vitals.mllp_peer import send_one

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WAIT_S = 5.0


@dataclass
class Clock:
    """The gateway's (and the monitor's) clock, advanced by hand."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Bed:
    """A listener feeding one bed's vitals state; every accepted sample is also queued."""

    listener: VitalsListener
    state: VitalsState
    samples: asyncio.Queue[VitalsSample]
    clock: Clock


@pytest_asyncio.fixture
async def bed() -> AsyncIterator[Bed]:
    clock = Clock()
    state = VitalsState("bed-1")
    samples: asyncio.Queue[VitalsSample] = asyncio.Queue()

    def on_sample(sample: VitalsSample) -> None:
        state.update(sample)
        samples.put_nowait(sample)

    async with VitalsListener(ReceiverConfig(on_sample=on_sample, now=clock), port=0) as server:
        yield Bed(server, state, samples, clock)


def _monitor(clock: Clock, acks: asyncio.Queue[AckResult]) -> Monitor:
    return Monitor(
        load_scenario("demo").model(seed=4),
        dose_source=lambda: Doses(0.05, 0.03),
        bed="bed-1",
        clock=SimClock(speed=60),
        interval_s=0.01,
        wall_clock=clock,
        backoff=Backoff(initial_s=0.01, maximum_s=0.05),
        on_ack=acks.put_nowait,
    )


async def _send_one(port: int, payload: bytes) -> Ack:
    """Send one framed message on a fresh connection and read its ACK."""
    return await send_one("127.0.0.1", port, payload, timeout_s=WAIT_S)


def _spoof(stamp: datetime, map_value: int = 50) -> bytes:
    return build_oru(
        control_id="spoof-1",
        sent_at=stamp,
        values={Parameter.MAP: (Decimal(map_value), stamp)},
        bed="bed-1",
        sending_application="ROGUE",
    )


def _map(state: VitalsState) -> tuple[Decimal, datetime]:
    latest = state.latest(Parameter.MAP)
    assert latest is not None
    return latest.value, latest.at


@pytest.mark.asyncio
async def test_reading_stamped_290_s_ahead_is_refused_and_the_monitor_keeps_map_live(
    bed: Bed,
) -> None:
    """MAP 50 stamped 290 s ahead gets AE naming OBX-14, the skew and the limit; it never
    reaches the state, and the real monitor's MAP (~75) is what the state and the rule engine
    see, fresh, from its first message on."""
    ack = await _send_one(bed.listener.port, _spoof(T0 + timedelta(seconds=290)))
    assert (ack.code, ack.control_id, ack.location) == (AckCode.AE, "spoof-1", "OBX^1^14")
    assert "290 s ahead of the gateway clock (limit 60 s)" in ack.text
    assert bed.samples.empty()
    assert bed.state.latest(Parameter.MAP) is None

    acks: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(bed.clock, acks)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(bed.listener.url), name="monitor")
        first = await asyncio.wait_for(acks.get(), WAIT_S)
        task.cancel()
    assert first.ack.code is AckCode.AA
    assert monitor.last_reading is not None
    value, at = _map(bed.state)
    assert value == round(monitor.last_reading.map)
    assert 65 <= value <= 85
    assert at == T0
    snapshot = bed.state.snapshot(bed.clock())
    assert snapshot["source"] == "hl7:INFUSIOND-SIM"
    assert "stale" not in snapshot["map"]
    check = bed.state.check_vitals()
    assert check is not None
    assert check["map"] == {"value": value, "unit": "mm[Hg]", "at": rfc3339_ms(T0)}


@pytest.mark.asyncio
async def test_reading_stamped_within_the_skew_cannot_pin_the_state_against_the_monitor(
    bed: Bed,
) -> None:
    """MAP 50 stamped 50 s ahead is accepted but held at its receipt (T0); the monitor's next
    message, one second later, replaces it at once (before the fix it was ignored until the
    gateway clock passed the spoofed stamp), and the spoofed value goes stale counted from its
    receipt, never from its stamp."""
    ack = await _send_one(bed.listener.port, _spoof(T0 + timedelta(seconds=50)))
    assert ack.code is AckCode.AA
    assert _map(bed.state) == (50, T0)
    assert bed.state.snapshot(T0 + timedelta(seconds=901))["map"]["stale"] is True

    bed.clock.at = T0 + timedelta(seconds=1)
    acks: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(bed.clock, acks)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(bed.listener.url), name="monitor")
        first = await asyncio.wait_for(acks.get(), WAIT_S)
        task.cancel()
    assert first.ack.code is AckCode.AA
    assert monitor.last_reading is not None
    value, at = _map(bed.state)
    assert (value, at) == (round(monitor.last_reading.map), T0 + timedelta(seconds=1))
    assert value != 50
    assert bed.state.source == "hl7:INFUSIOND-SIM"


@pytest.mark.asyncio
async def test_idle_sockets_holding_every_slot_cannot_keep_the_monitor_out(bed: Bed) -> None:
    """20 sockets that each sent one byte (a frame that never ends) take all 16 slots; the real
    monitor still connects at once: its ORU is AA'd and reaches the state. The longest-idle
    sockets were closed to make room (4 for the idle ones over the limit, 1 for the monitor)."""
    idle = [await asyncio.open_connection("127.0.0.1", bed.listener.port) for _ in range(20)]
    for _, writer in idle:
        writer.write(b"\x0b")
        await writer.drain()

    acks: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(bed.clock, acks)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(bed.listener.url), name="monitor")
        first = await asyncio.wait_for(acks.get(), WAIT_S)
        sample = await asyncio.wait_for(bed.samples.get(), WAIT_S)
        task.cancel()
    assert first.ack.code is AckCode.AA
    assert sample.control_id == first.control_id
    assert bed.state.latest(Parameter.MAP) is not None
    assert monitor.stats.connections == 1
    for reader, _ in idle[:5]:  # the five that were idle longest
        assert await asyncio.wait_for(reader.read(100), WAIT_S) == b""
    assert bed.listener.stats.evicted == 5
    assert bed.listener.connections <= bed.listener.max_connections == 16
    for _, writer in idle:
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_sending_monitor_is_never_the_peer_evicted(bed: Bed) -> None:
    """With the monitor connected and sending, sockets that only sit there fill the other
    slots and keep coming: each newcomer evicts an idle socket, never the monitor, whose
    messages go on being AA'd on its one connection."""
    acks: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(bed.clock, acks)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(bed.listener.url), name="monitor")
        assert (await asyncio.wait_for(acks.get(), WAIT_S)).ack.code is AckCode.AA
        idle = [await asyncio.open_connection("127.0.0.1", bed.listener.port) for _ in range(24)]
        for reader, _ in idle[:9]:  # 15 fit beside the monitor; 9 more evicted 9 idle ones
            assert await asyncio.wait_for(reader.read(100), WAIT_S) == b""
        while not acks.empty():
            acks.get_nowait()
        later = [await asyncio.wait_for(acks.get(), WAIT_S) for _ in range(3)]
        task.cancel()
    assert all(r.ack.code is AckCode.AA for r in later)
    assert monitor.stats.connections == 1
    assert bed.listener.stats.evicted == 9
    for _, writer in idle:
        writer.close()
        await writer.wait_closed()
