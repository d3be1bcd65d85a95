"""The alarms one pump's state shows, and since when: the device's own (taken from each
snapshot) and those the daemon raises itself (``comm_lost``, ``out_of_library``), which are
events of their own when they are raised and cleared."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from daemon.base.events import Alarm, AlarmCleared, AlarmRaised, Priority, PumpEvent
from daemon.core.channel_types import OFFLINE_ALARM, OUT_OF_LIBRARY, Latched
from daemon.core.pump_events import ALARM_PRIORITY
from drivers.base import PumpStatus

#: the alarms only the daemon raises and clears (a snapshot never clears them)
DAEMON_ALARMS = frozenset({OUT_OF_LIBRARY, OFFLINE_ALARM})


@dataclass
class PumpAlarms:
    """The latched alarms of one channel; ``emit`` hands the channel an alarm event (journaled
    with the transition in progress), ``now`` is the channel's wall clock."""

    emit: Callable[[PumpEvent], Awaitable[None]]
    now: Callable[[], datetime]
    latched: dict[str, Latched] = field(default_factory=dict)

    async def set_daemon_alarm(self, code: str, *, active: bool, message: str = "") -> None:
        """Raise (once) or clear (once) one of the daemon's own alarms, with its event."""
        present = self.latched.get(code)
        if active and present is None:
            now = self.now()
            self.latched[code] = Latched(code, Priority.HIGH, now)
            await self.emit(AlarmRaised(Alarm(code, Priority.HIGH, now, message or None)))
        elif not active and present is not None:
            del self.latched[code]
            await self.emit(AlarmCleared(Alarm(code, Priority.HIGH, present.since)))

    def sync_device(self, status: PumpStatus, now: datetime) -> None:
        """Latch the device alarms ``status`` shows (since ``now`` when new), drop the others
        (the events of both are derived from the snapshots, not here)."""
        device_codes = {a.value for a in status.alarms}
        for code in list(self.latched):
            if code not in device_codes and code not in DAEMON_ALARMS:
                del self.latched[code]
        for alarm in status.alarms:
            if alarm.value not in self.latched:
                self.latched[alarm.value] = Latched(alarm.value, ALARM_PRIORITY[alarm], now)
