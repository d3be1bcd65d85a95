"""What a channel reports to and is made of: the hub (journal + MQTT), its timing, the poll
report for the metrics, the dose history's records, and the state a transition saves so that
a journal fault can undo it."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from daemon.base.events import Priority, PumpEvent
from daemon.base.payload import JsonObject
from daemon.core.program import Program
from drivers.base import ConnectionState, PumpStatus

if TYPE_CHECKING:
    from daemon.core.channel import Channel

#: the alarms the daemon itself raises (the device raises the others)
OUT_OF_LIBRARY = "out_of_library"
OFFLINE_ALARM = "comm_lost"


class Hub(Protocol):
    """Where a channel sends what it learns (journal + MQTT, provided by the service)."""

    def now(self) -> datetime: ...

    async def emit_event(self, pump_id: str, event: PumpEvent) -> None: ...

    async def emit_events(self, pump_id: str, events: list[PumpEvent]) -> None:
        """Journal ``events`` in order in ONE transaction (all or none), then queue them."""
        ...

    async def publish_state(self, pump_id: str, data: JsonObject) -> None:
        """Publish ``data``, the ``pump.state`` payload (built at the edge, see channel_state)."""
        ...


@dataclass(frozen=True, slots=True)
class PollReport:
    """One poll, for the metrics (daemon/mqtt/metrics.py)."""

    pump_id: str
    answered: bool
    late_s: float | None  # how late it started against its schedule (None: first after connect)


PollHook = Callable[[PollReport], None]

DoseConverter = Callable[[Program, Decimal], Decimal | None]
"""rate mL/h -> dose in ``program.dose_unit`` (None when it cannot be computed)."""

ObserveCheck = Callable[["Channel", Decimal, Decimal], JsonObject | None]
"""(channel, old rate, new rate) -> the verdict's JSON (journaled verbatim) when the library
would not accept the change outright (a finding of severity confirm or reject), else None.
Pure: journals nothing."""


def refresh_phase(pump_id: str) -> float:
    """A stable fraction in [0, 1) per pump id: where in the refresh period its refresh falls."""
    return zlib.crc32(pump_id.encode()) / 2**32


@dataclass
class ChannelConfig:
    """Timing of one channel."""

    poll_period_s: float = 1.0
    publish_every_s: float = 10.0
    offline_after_failures: int = 2
    watchdog_s: int = 0


@dataclass
class DoseRecord:
    """One applied dose change, for the rule engine's history."""

    at: datetime
    dose: Decimal


@dataclass
class Latched:
    """An alarm shown in the state, and since when."""

    code: str
    priority: Priority
    since: datetime


@dataclass(frozen=True, slots=True)
class Saved:
    """What a transition may change, kept to undo it when its journal write fails."""

    connection: ConnectionState
    status: PumpStatus | None
    last_poll: datetime | None
    alarms: dict[str, Latched]
    history: tuple[DoseRecord, ...]
    uncertain: tuple[str, Decimal, Decimal] | None
    uncertain_program: Program | None
    failures: int
    program: Program
    rate_before_restart: Decimal | None
    interrupted_writes: dict[Decimal, str]
