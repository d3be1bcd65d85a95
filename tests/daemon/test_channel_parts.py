"""The collaborators a channel owns: when its state is published (StatePublisher) and the alarms
its state shows (PumpAlarms)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from daemon.base.events import AlarmCleared, AlarmRaised, PumpEvent
from daemon.base.payload import JsonObject
from daemon.core.channel_alarms import PumpAlarms
from daemon.core.channel_state import StatePublisher
from daemon.core.channel_types import OFFLINE_ALARM, OUT_OF_LIBRARY
from drivers.base import AlarmCode, PumpStatus, RunState

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Published:
    """Collects what a StatePublisher publishes."""

    def __init__(self) -> None:
        self.payloads: list[tuple[str, JsonObject]] = []

    async def __call__(self, pump_id: str, data: JsonObject) -> None:
        self.payloads.append((pump_id, data))


def state(**changes: object) -> JsonObject:
    return {"pump_id": "p1", "status": "infusing", "battery": 80, "last_poll": "t0"} | changes


@pytest.mark.asyncio
async def test_state_is_published_when_it_changes_not_for_refresh_only_keys() -> None:
    published = Published()
    publisher = StatePublisher("p1", published, every_s=3600.0)
    await publisher.offer(state())
    await publisher.offer(state())  # nothing new
    await publisher.offer(state(battery=79, last_poll="t1"))  # refresh-only keys moved
    assert len(published.payloads) == 1
    await publisher.offer(state(status="stopped"))
    await publisher.offer(state(status="stopped"), force=True)
    assert [data["status"] for _, data in published.payloads] == [
        "infusing",
        "stopped",
        "stopped",
    ]
    assert {pump for pump, _ in published.payloads} == {"p1"}


@pytest.mark.asyncio
async def test_a_stale_state_is_published_again() -> None:
    published = Published()
    publisher = StatePublisher("p1", published, every_s=1e-9)
    await publisher.offer(state())
    await publisher.offer(state())
    assert len(published.payloads) == 2


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


def alarms_with_events() -> tuple[PumpAlarms, list[PumpEvent], Clock]:
    events: list[PumpEvent] = []
    clock = Clock()

    async def emit(event: PumpEvent) -> None:
        events.append(event)

    return PumpAlarms(emit, clock), events, clock


@pytest.mark.asyncio
async def test_a_daemon_alarm_is_raised_and_cleared_once_with_its_since() -> None:
    alarms, events, clock = alarms_with_events()
    await alarms.set_daemon_alarm(OUT_OF_LIBRARY, active=True, message="outside")
    clock.at = T0 + timedelta(seconds=5)
    await alarms.set_daemon_alarm(OUT_OF_LIBRARY, active=True)
    await alarms.set_daemon_alarm(OUT_OF_LIBRARY, active=False)
    await alarms.set_daemon_alarm(OUT_OF_LIBRARY, active=False)
    assert [type(e) for e in events] == [AlarmRaised, AlarmCleared]
    raised, cleared = events
    assert isinstance(raised, AlarmRaised)
    assert isinstance(cleared, AlarmCleared)
    assert raised.alarm.since == cleared.alarm.since == T0
    assert raised.alarm.message == "outside"
    assert alarms.latched == {}


@pytest.mark.asyncio
async def test_a_snapshot_keeps_the_daemon_alarms_and_replaces_the_device_ones() -> None:
    alarms, events, _clock = alarms_with_events()
    await alarms.set_daemon_alarm(OFFLINE_ALARM, active=True)
    occluded = PumpStatus(RunState.STOPPED, Decimal(0), frozenset({AlarmCode.OCCLUSION}))
    alarms.sync_device(occluded, T0)
    alarms.sync_device(occluded, T0 + timedelta(seconds=1))  # still the first since
    assert alarms.latched[AlarmCode.OCCLUSION.value].since == T0
    alarms.sync_device(PumpStatus(RunState.STOPPED, Decimal(0)), T0)
    assert set(alarms.latched) == {OFFLINE_ALARM}
    assert len(events) == 1  # device alarms' events come from the snapshots' diff
