"""Pure derivation of pump events from two consecutive status snapshots.

The channel polls a pump and hands the previous and the new :class:`PumpStatus` here; what comes
back is the list of ``pump.event`` data dicts (docs/schemas/infusiond.pump.event-1.json) in a
deterministic order.
No clock, no I/O: ``now`` and the dose conversion are arguments, so this is unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from daemon.base.timefmt import format_ts
from drivers.base import AlarmCode, ConnectionState, PumpStatus, RunState


class AlarmPriorities(dict[AlarmCode, str]):
    """Priority of each device alarm; a code missing from the table is ``high``, never KeyError.

    A pump or driver that reports an alarm this table does not list (a new driver, a new code)
    must still raise it, and at the most urgent priority: failing safe beats crashing the poll.
    """

    def __missing__(self, code: AlarmCode) -> str:
        return "high"


#: IEC 60601-1-8 style priorities for device alarms (daemon-raised ones are set where raised).
#: Every :class:`AlarmCode` is listed (a test iterates the enum); see AlarmPriorities for others.
ALARM_PRIORITY = AlarmPriorities(
    {
        AlarmCode.OCCLUSION: "high",
        AlarmCode.AIR_IN_LINE: "high",
        AlarmCode.EMPTY: "high",
        AlarmCode.COMM_TIMEOUT: "high",
        AlarmCode.HARDWARE_FAULT: "high",
        AlarmCode.HEARTBEAT_FROZEN: "high",
        AlarmCode.STALLED: "high",
        # running in reverse draws from the patient's line: nothing is delivered
        AlarmCode.WITHDRAWING: "high",
        # delivering at the maximum rate: the dose is not the programmed one
        AlarmCode.PURGING: "high",
        AlarmCode.DOOR_OPEN: "medium",
        AlarmCode.DEVICE_RESET: "medium",
        AlarmCode.PROGRAM_ERROR: "medium",
        AlarmCode.PHASE_OUT_OF_RANGE: "medium",
        AlarmCode.NEAR_END: "low",
        AlarmCode.LOW_BATTERY: "low",
    }
)

DoseObj = Callable[[Decimal], dict[str, Any] | None]
"""Maps a rate in mL/h to the public dose object ``{"value", "unit"}`` (None if unknown)."""


def rate_obj(rate_ml_h: Decimal) -> dict[str, Any]:
    """The public rate object: ``{"value": 52.5, "unit": "mL/h"}``."""
    return {"value": float(rate_ml_h), "unit": "mL/h"}


def volume_obj(volume_ml: Decimal | None) -> dict[str, Any] | None:
    """The public volume object in mL, or None when the device does not report it."""
    return None if volume_ml is None else {"value": float(volume_ml), "unit": "mL"}


@dataclass(frozen=True, slots=True)
class Observation:
    """What the channel knew before and knows now about one pump."""

    connection: ConnectionState
    status: PumpStatus | None


def alarm_event(
    kind: str, code: str, priority: str, since: datetime, message: str | None = None
) -> dict[str, Any]:
    """``alarm_raised`` / ``alarm_cleared`` with the alarm object of the public schema."""
    alarm: dict[str, Any] = {"code": code, "priority": priority, "since": format_ts(since)}
    if message:
        alarm["message"] = message
    return {"type": kind, "alarm": alarm}


def connection_event(
    previous: ConnectionState, now_state: ConnectionState, reason: str | None = None
) -> dict[str, Any]:
    """``connection_changed``: the new ``connection``, the ``previous`` one, and why."""
    event: dict[str, Any] = {
        "type": "connection_changed",
        "connection": now_state.value,
        "previous": previous.value,
    }
    if reason:
        event["reason"] = reason
    return event


def diff(
    before: Observation, after: Observation, dose_obj: DoseObj, now: datetime
) -> list[dict[str, Any]]:
    """Events implied by the change from ``before`` to ``after`` (empty when nothing changed).

    Order: connection, alarms cleared, alarms raised, delivery, rate, volume. A rate change
    seen here is a change made at the device (front panel): commands update the channel's
    known status themselves so that their change is reported once, with the command id.
    """
    events: list[dict[str, Any]] = []
    if before.connection is not after.connection:
        event = connection_event(before.connection, after.connection)
        if after.status is not None:  # the rate at (re)connection: a restart compares to it
            event["rate"] = rate_obj(after.status.rate_ml_h)
        events.append(event)
    old, new = before.status, after.status
    if new is None:
        return events
    old_alarms = old.alarms if old is not None else frozenset()
    for kind, codes in (
        ("alarm_cleared", old_alarms - new.alarms),
        ("alarm_raised", new.alarms - old_alarms),
    ):
        events.extend(
            alarm_event(kind, code.value, ALARM_PRIORITY[code], now)
            for code in sorted(codes, key=lambda a: a.value)
        )
    if old is None:
        return events
    was_running = old.state is RunState.INFUSING
    is_running = new.state is RunState.INFUSING
    if is_running and not was_running:
        events.append({"type": "delivery_started", "rate": rate_obj(new.rate_ml_h)})
    elif was_running and not is_running:
        events.append({"type": "delivery_stopped", "status": new.state.value})
    if new.rate_ml_h != old.rate_ml_h:
        events.append(rate_changed_event(old.rate_ml_h, new.rate_ml_h, dose_obj, source="device"))
    if (
        old.volume_infused_ml is not None
        and new.volume_infused_ml is not None
        and new.volume_infused_ml == 0 < old.volume_infused_ml
    ):
        events.append({"type": "volume_cleared", "previous": volume_obj(old.volume_infused_ml)})
    return events


def rate_changed_event(
    old_rate: Decimal,
    new_rate: Decimal,
    dose_obj: DoseObj,
    *,
    source: str = "command",
    command_id: str | None = None,
) -> dict[str, Any]:
    """The one ``rate_changed`` event for an applied change (command or device)."""
    event: dict[str, Any] = {
        "type": "rate_changed",
        "from": {"rate": rate_obj(old_rate), "dose": dose_obj(old_rate)},
        "to": {"rate": rate_obj(new_rate), "dose": dose_obj(new_rate)},
        "source": source,
    }
    if command_id is not None:
        event["command_id"] = command_id
    return event
