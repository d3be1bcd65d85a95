"""Pump events for tests that journal events: real typed events (:mod:`daemon.base.events`),
and :class:`RawEvent` for the tests of a reader that must cope with a row today's producers
never write (an older version's, a damaged or hostile one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from daemon.base.events import (
    Alarm,
    AlarmRaised,
    ChangeSource,
    CommandRejected,
    DeliveryStarted,
    DeliveryStopped,
    Priority,
    PumpEvent,
    RateChanged,
    RatePoint,
)
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity
from drivers.base import RunState


def rate_changed(old: float, new: float, *, command_id: str | None = None) -> RateChanged:
    """A rate change from ``old`` to ``new`` mL/h (by a command when ``command_id``)."""
    return RateChanged(
        RatePoint(Quantity.rate(old), None),
        RatePoint(Quantity.rate(new), None),
        ChangeSource.COMMAND if command_id else ChangeSource.DEVICE,
        command_id,
    )


def started(rate: float = 5.0) -> DeliveryStarted:
    """A start at ``rate`` mL/h."""
    return DeliveryStarted(Quantity.rate(rate))


def alarm_raised(code: str, since: datetime) -> AlarmRaised:
    """A high-priority alarm raised at ``since``."""
    return AlarmRaised(Alarm(code, Priority.HIGH, since))


def tagged(tag: object, **extra: object) -> CommandRejected:
    """An event that carries ``tag`` (and ``extra``) where tests can find it again: the
    verdict of a ``command_rejected``, which the journal keeps verbatim."""
    return CommandRejected("c-tagged", {"tag": tag, **extra})


@dataclass(frozen=True, slots=True)
class RawEvent(PumpEvent):
    """An event journaled as exactly ``data`` (no pump id added): only for the tests of a
    reader's robustness or of the journal's mechanics on rows of any shape."""

    data: JsonObject

    def to_json(self) -> JsonObject:
        return self.data

    def journaled(self, pump_id: str) -> JsonObject:
        return self.data


def stopped() -> DeliveryStopped:
    """A stop."""
    return DeliveryStopped(RunState.STOPPED)
