"""Pure derivation of pump events from two consecutive status snapshots.

The channel polls a pump and hands the previous and the new :class:`PumpStatus` here; what comes
back is the list of typed pump events (:mod:`daemon.base.events`) in a deterministic order.
No clock, no I/O: ``now`` and the dose conversion are arguments, so this is unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from daemon.base.events import (
    READERS,
    Alarm,
    AlarmCleared,
    AlarmRaised,
    ChangeSource,
    ConnectionChanged,
    DeliveryStarted,
    DeliveryStopped,
    EventReader,
    Priority,
    PumpEvent,
    RateChanged,
    RatePoint,
    VolumeCleared,
    read_event,
)
from daemon.base.quantities import Quantity
from daemon.core.program import ProgramChanged
from drivers.base import AlarmCode, ConnectionState, PumpStatus, RunState


class AlarmPriorities(dict[AlarmCode, Priority]):
    """Priority of each device alarm; a code missing from the table is ``high``, never KeyError.

    A pump or driver that reports an alarm this table does not list (a new driver, a new code)
    must still raise it, and at the most urgent priority: failing safe beats crashing the poll.
    """

    def __missing__(self, code: AlarmCode) -> Priority:
        return Priority.HIGH


#: IEC 60601-1-8 style priorities for device alarms (daemon-raised ones are set where raised).
#: Every :class:`AlarmCode` is listed (a test iterates the enum); see AlarmPriorities for others.
ALARM_PRIORITY = AlarmPriorities(
    {
        AlarmCode.OCCLUSION: Priority.HIGH,
        AlarmCode.AIR_IN_LINE: Priority.HIGH,
        AlarmCode.EMPTY: Priority.HIGH,
        AlarmCode.COMM_TIMEOUT: Priority.HIGH,
        AlarmCode.HARDWARE_FAULT: Priority.HIGH,
        AlarmCode.HEARTBEAT_FROZEN: Priority.HIGH,
        AlarmCode.STALLED: Priority.HIGH,
        # running in reverse draws from the patient's line: nothing is delivered
        AlarmCode.WITHDRAWING: Priority.HIGH,
        # delivering at the maximum rate: the dose is not the programmed one
        AlarmCode.PURGING: Priority.HIGH,
        AlarmCode.DOOR_OPEN: Priority.MEDIUM,
        AlarmCode.DEVICE_RESET: Priority.MEDIUM,
        AlarmCode.PROGRAM_ERROR: Priority.MEDIUM,
        AlarmCode.PHASE_OUT_OF_RANGE: Priority.MEDIUM,
        AlarmCode.NEAR_END: Priority.LOW,
        AlarmCode.LOW_BATTERY: Priority.LOW,
    }
)

DoseObj = Callable[[Decimal], Quantity | None]
"""Maps a rate in mL/h to the dose it delivers under the current program (None if unknown)."""


def rate_point(rate_ml_h: Decimal, dose_obj: DoseObj) -> RatePoint:
    """A rate and its dose, as ``rate_changed`` and ``out_of_library_observed`` carry them."""
    return RatePoint(Quantity.rate(rate_ml_h), dose_obj(rate_ml_h))


@dataclass(frozen=True, slots=True)
class Observation:
    """What the channel knew before and knows now about one pump."""

    connection: ConnectionState
    status: PumpStatus | None


def diff(
    before: Observation, after: Observation, dose_obj: DoseObj, now: datetime
) -> list[PumpEvent]:
    """Events implied by the change from ``before`` to ``after`` (empty when nothing changed).

    Order: connection, alarms cleared, alarms raised, delivery, rate, volume. A rate change
    seen here is a change made at the device (front panel): commands update the channel's
    known status themselves so that their change is reported once, with the command id.
    """
    events: list[PumpEvent] = []
    if before.connection is not after.connection:
        events.append(
            ConnectionChanged(
                after.connection,
                before.connection,
                # the rate at (re)connection: a restart compares to it
                rate=Quantity.rate(after.status.rate_ml_h) if after.status is not None else None,
            )
        )
    old, new = before.status, after.status
    if new is None:
        return events
    old_alarms = old.alarms if old is not None else frozenset()
    events.extend(
        AlarmCleared(Alarm(code.value, ALARM_PRIORITY[code], now))
        for code in sorted(old_alarms - new.alarms, key=lambda a: a.value)
    )
    events.extend(
        AlarmRaised(Alarm(code.value, ALARM_PRIORITY[code], now))
        for code in sorted(new.alarms - old_alarms, key=lambda a: a.value)
    )
    if old is None:
        return events
    was_running = old.state is RunState.INFUSING
    is_running = new.state is RunState.INFUSING
    if is_running and not was_running:
        events.append(DeliveryStarted(Quantity.rate(new.rate_ml_h)))
    elif was_running and not is_running:
        events.append(DeliveryStopped(new.state))
    if new.rate_ml_h != old.rate_ml_h:
        events.append(
            rate_changed_event(old.rate_ml_h, new.rate_ml_h, dose_obj, source=ChangeSource.DEVICE)
        )
    if (
        old.volume_infused_ml is not None
        and new.volume_infused_ml is not None
        and new.volume_infused_ml == 0 < old.volume_infused_ml
    ):
        events.append(VolumeCleared(Quantity.volume(old.volume_infused_ml)))
    return events


def rate_changed_event(
    old_rate: Decimal,
    new_rate: Decimal,
    dose_obj: DoseObj,
    *,
    source: ChangeSource = ChangeSource.COMMAND,
    command_id: str | None = None,
    while_disconnected: bool = False,
) -> RateChanged:
    """The one ``rate_changed`` event for an applied change (command or device): the doses
    of both rates under the current program."""
    return RateChanged(
        rate_point(old_rate, dose_obj),
        rate_point(new_rate, dose_obj),
        source,
        command_id,
        while_disconnected=while_disconnected,
    )


def event_from_json(data: object) -> PumpEvent:
    """Any journaled pump event, ``program_changed`` included (see
    :func:`daemon.base.events.read_event`)."""
    return read_event(data, PUMP_EVENT_READERS)


#: the readers of every event type (:data:`daemon.base.events.READERS` and ``program_changed``)
PUMP_EVENT_READERS: Mapping[str, EventReader] = {
    **READERS,
    ProgramChanged.TYPE.value: ProgramChanged.from_json,
}
