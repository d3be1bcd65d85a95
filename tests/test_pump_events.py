"""Events derived from consecutive pump snapshots are exactly the changes, once each."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from daemon.base.quantities import Quantity
from daemon.core.pump_events import (
    ALARM_PRIORITY,
    AlarmPriorities,
    Observation,
    rate_changed_event,
)
from daemon.core.pump_events import diff as typed_diff
from drivers.base import AlarmCode, ConnectionState, PumpStatus, RunState

ON = ConnectionState.ONLINE
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def dose_obj(rate: Decimal) -> Quantity:
    return Quantity(float(rate) / 1050, "ug/kg/min")


def diff(*args: Any) -> list[dict[str, Any]]:
    """The derived events as they are journaled and published."""
    return [event.to_json() for event in typed_diff(*args)]


def status(**kw: Any) -> PumpStatus:
    base: dict[str, Any] = {
        "state": RunState.INFUSING,
        "rate_ml_h": Decimal("52.5"),
        "volume_infused_ml": Decimal(10),
    }
    base.update(kw)
    return PumpStatus(**base)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_identical_snapshots_yield_no_event() -> None:
    """Polling an unchanged pump produces nothing to publish."""
    s = status()
    assert diff(Observation(ON, s), Observation(ON, s), dose_obj, NOW) == []


def test_front_panel_rate_change_is_one_device_sourced_event() -> None:
    """A rate changed at the device carries from/to rate and dose and source=device."""
    events = diff(
        Observation(ON, status()),
        Observation(ON, status(rate_ml_h=Decimal("63.0"))),
        dose_obj,
        NOW,
    )
    assert types(events) == ["rate_changed"]
    assert events[0]["source"] == "device"
    assert events[0]["from"]["rate"] == {"value": 52.5, "unit": "mL/h"}
    assert events[0]["to"]["rate"] == {"value": 63.0, "unit": "mL/h"}
    assert events[0]["to"]["dose"]["value"] == 0.06


def test_alarm_raise_and_clear_in_a_deterministic_order() -> None:
    """Cleared alarms come before raised ones, each sorted by code, with priority."""
    before = status(alarms=frozenset({AlarmCode.NEAR_END}))
    after = status(
        state=RunState.ALARM, alarms=frozenset({AlarmCode.OCCLUSION, AlarmCode.AIR_IN_LINE})
    )
    events = diff(Observation(ON, before), Observation(ON, after), dose_obj, NOW)
    assert [(e["type"], e.get("alarm", {}).get("code")) for e in events] == [
        ("alarm_cleared", "near_end"),
        ("alarm_raised", "air_in_line"),
        ("alarm_raised", "occlusion"),
        ("delivery_stopped", None),
    ]
    assert events[1]["alarm"] == {
        "code": "air_in_line",
        "priority": "high",
        "since": "2026-11-26T12:00:00.000Z",
    }


def test_start_stop_and_volume_clear() -> None:
    """Stopped->infusing starts delivery; a volume reset to 0 is volume_cleared."""
    stopped = status(state=RunState.STOPPED)
    events = diff(Observation(ON, stopped), Observation(ON, status()), dose_obj, NOW)
    assert types(events) == ["delivery_started"]
    cleared = status(state=RunState.STOPPED, volume_infused_ml=Decimal(0))
    events = diff(Observation(ON, stopped), Observation(ON, cleared), dose_obj, NOW)
    assert types(events) == ["volume_cleared"]


def test_connection_change_and_first_snapshot() -> None:
    """The first snapshot after connecting reports the connection and any active alarm only."""
    first = status(alarms=frozenset({AlarmCode.LOW_BATTERY}))
    events = diff(
        Observation(ConnectionState.CONNECTING, None), Observation(ON, first), dose_obj, NOW
    )
    assert types(events) == ["connection_changed", "alarm_raised"]
    assert events[0]["previous"] == "connecting"
    assert events[0]["connection"] == "online"


def test_command_rate_change_event_carries_the_command_id() -> None:
    """A command's change is reported with its id instead of source=device."""
    event = rate_changed_event(Decimal(21), Decimal("63.0"), dose_obj, command_id="c-1").to_json()
    assert event["command_id"] == "c-1"
    assert event["source"] == "command"


@pytest.mark.parametrize("code", list(AlarmCode))
def test_every_alarm_code_has_a_priority_of_its_own(code: AlarmCode) -> None:
    """The table lists every AlarmCode explicitly (not only through the fail-safe default)."""
    assert code in ALARM_PRIORITY
    assert ALARM_PRIORITY[code] in {"high", "medium", "low"}


@pytest.mark.parametrize("code", [AlarmCode.WITHDRAWING, AlarmCode.PURGING])
def test_running_but_not_infusing_is_a_high_priority_alarm(code: AlarmCode) -> None:
    """Running in reverse (draws from the line) or purging (at the maximum rate): high."""
    assert ALARM_PRIORITY[code] == "high"


def test_a_code_missing_from_the_table_is_high_and_never_raises() -> None:
    """A lookup of a code the table lacks answers high (fail safe) instead of KeyError."""
    partial = AlarmPriorities({AlarmCode.NEAR_END: "low"})
    assert partial[AlarmCode.NEAR_END] == "low"
    assert partial[AlarmCode.WITHDRAWING] == "high"
    assert AlarmCode.WITHDRAWING not in partial  # the lookup does not insert it


def test_withdrawing_pump_raises_its_alarm_and_stops_delivery() -> None:
    """Infusing -> withdrawing: alarm_raised(withdrawing, high) and delivery_stopped, no crash."""
    before = status()
    after = status(state=RunState.ALARM, alarms=frozenset({AlarmCode.WITHDRAWING}))
    events = diff(Observation(ON, before), Observation(ON, after), dose_obj, NOW)
    assert types(events) == ["alarm_raised", "delivery_stopped"]
    assert events[0]["alarm"]["code"] == "withdrawing"
    assert events[0]["alarm"]["priority"] == "high"
    assert events[1]["status"] == "alarm"
