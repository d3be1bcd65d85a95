"""Pump events (the ``data`` of ``pump.event``, docs/schemas/infusiond.pump.event-1.json) as
typed values.

Producers build these; the hub journals them, and they become JSON only there
(:meth:`PumpEvent.to_json`, plus the pump id the journal row carries: :meth:`PumpEvent.journaled`).
Readers of the journal get them back with :func:`read_event`, which names the field a malformed
row gets wrong (:class:`~daemon.base.errors.PayloadError`).

``program_changed`` carries a ``Program``, which belongs to ``daemon.core``: its class lives
there (``daemon.core.program.ProgramChanged``) and ``daemon.core.pump_events.event_from_json``
reads every type, this module's readers plus that one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from daemon.base.errors import PayloadError
from daemon.base.payload import (
    JsonObject,
    choice,
    flag,
    obj,
    optional_text,
    required,
    text,
    timestamp,
)
from daemon.base.quantities import Quantity, optional_json, optional_quantity
from daemon.base.timefmt import format_ts
from drivers.base import ConnectionState, RunState
from protocol.verdict import LibraryIdentity


class EventType(enum.StrEnum):
    """The ``type`` of a pump event."""

    DELIVERY_STARTED = "delivery_started"
    DELIVERY_STOPPED = "delivery_stopped"
    RATE_CHANGED = "rate_changed"
    PROGRAM_CHANGED = "program_changed"
    ALARM_RAISED = "alarm_raised"
    ALARM_CLEARED = "alarm_cleared"
    CONNECTION_CHANGED = "connection_changed"
    OUT_OF_LIBRARY_OBSERVED = "out_of_library_observed"
    COMMAND_REJECTED = "command_rejected"
    OVERRIDE_ACCEPTED = "override_accepted"
    VOLUME_CLEARED = "volume_cleared"
    LIBRARY_CHANGED = "library_changed"


class ChangeSource(enum.StrEnum):
    """Who changed a rate: the device (front panel), a command, or the gateway."""

    DEVICE = "device"
    COMMAND = "command"
    GATEWAY = "gateway"


class Priority(enum.StrEnum):
    """An alarm's priority (IEC 60601-1-8 style)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Via(enum.StrEnum):
    """How a new drug library arrived."""

    SIGHUP = "sighup"
    MQTT = "mqtt"


# -- the events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PumpEvent:
    """What every pump event has: its ``type`` and its JSON."""

    TYPE: ClassVar[EventType]

    def to_json(self) -> JsonObject:
        """The event's ``data`` object as published (without ``pump_id``)."""
        raise NotImplementedError

    def journaled(self, pump_id: str) -> JsonObject:
        """The event as the journal stores and the bus publishes it: with its pump's id."""
        return {**self.to_json(), "pump_id": pump_id}


@dataclass(frozen=True, slots=True)
class RatePoint:
    """A rate and the dose it delivers under the program of the moment (None: unknown)."""

    rate: Quantity | None
    dose: Quantity | None

    def to_json(self) -> JsonObject:
        return {"rate": optional_json(self.rate), "dose": optional_json(self.dose)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], key: str, where: str) -> RatePoint:
        point = obj(data, key, where)
        here = f"{where}.{key}"
        return cls(
            optional_quantity(required(point, "rate", here), where=f"{here}.rate"),
            optional_quantity(point.get("dose"), where=f"{here}.dose"),
        )


@dataclass(frozen=True, slots=True)
class DeliveryStarted(PumpEvent):
    """The pump started infusing, at ``rate``."""

    TYPE: ClassVar[EventType] = EventType.DELIVERY_STARTED
    rate: Quantity

    def to_json(self) -> JsonObject:
        return {"type": self.TYPE.value, "rate": self.rate.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryStarted:
        return cls(Quantity.from_json(required(data, "rate", "event"), where="event.rate"))


@dataclass(frozen=True, slots=True)
class DeliveryStopped(PumpEvent):
    """The pump stopped infusing; ``status`` is what it does now."""

    TYPE: ClassVar[EventType] = EventType.DELIVERY_STOPPED
    status: RunState

    def to_json(self) -> JsonObject:
        return {"type": self.TYPE.value, "status": self.status.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryStopped:
        return cls(choice(RunState, data, "status", "event"))


@dataclass(frozen=True, slots=True)
class RateChanged(PumpEvent):
    """An applied rate change: by a command (``command_id``) or at the device.

    ``reconciled``: an uncertain write the next reading confirmed; ``while_disconnected``: a
    change found at the first reading after a restart.
    """

    TYPE: ClassVar[EventType] = EventType.RATE_CHANGED
    before: RatePoint
    after: RatePoint
    source: ChangeSource
    command_id: str | None = None
    reconciled: bool = False
    while_disconnected: bool = False

    def to_json(self) -> JsonObject:
        data: JsonObject = {
            "type": self.TYPE.value,
            "from": self.before.to_json(),
            "to": self.after.to_json(),
            "source": self.source.value,
        }
        if self.command_id is not None:
            data["command_id"] = self.command_id
        if self.reconciled:
            data["reconciled"] = True
        if self.while_disconnected:
            data["while_disconnected"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateChanged:
        return cls(
            RatePoint.from_json(data, "from", "event"),
            RatePoint.from_json(data, "to", "event"),
            choice(ChangeSource, data, "source", "event"),
            optional_text(data, "command_id", "event"),
            flag(data, "reconciled", "event"),
            flag(data, "while_disconnected", "event"),
        )


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm as events carry it: since when it is raised, and why (daemon alarms)."""

    code: str
    priority: Priority
    since: datetime
    message: str | None = None

    def to_json(self) -> JsonObject:
        data: JsonObject = {
            "code": self.code,
            "priority": self.priority.value,
            "since": format_ts(self.since),
        }
        if self.message:
            data["message"] = self.message
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alarm:
        alarm = obj(data, "alarm", "event")
        return cls(
            text(alarm, "code", "event.alarm"),
            choice(Priority, alarm, "priority", "event.alarm"),
            timestamp(alarm, "since", "event.alarm"),
            optional_text(alarm, "message", "event.alarm"),
        )


@dataclass(frozen=True, slots=True)
class AlarmChange(PumpEvent):
    """What ``alarm_raised`` and ``alarm_cleared`` share: the alarm object, nothing else."""

    alarm: Alarm

    def to_json(self) -> JsonObject:
        return {"type": self.TYPE.value, "alarm": self.alarm.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(Alarm.from_json(data))


@dataclass(frozen=True, slots=True)
class AlarmRaised(AlarmChange):
    """An alarm began (at the device, or raised by the daemon)."""

    TYPE: ClassVar[EventType] = EventType.ALARM_RAISED


@dataclass(frozen=True, slots=True)
class AlarmCleared(AlarmChange):
    """An alarm ended; ``alarm.since`` is when it had been raised."""

    TYPE: ClassVar[EventType] = EventType.ALARM_CLEARED


@dataclass(frozen=True, slots=True)
class ConnectionChanged(PumpEvent):
    """The link to the pump changed; ``rate`` is the rate known then (a restart compares the
    next reading with it), ``reason`` why the link went down."""

    TYPE: ClassVar[EventType] = EventType.CONNECTION_CHANGED
    connection: ConnectionState
    previous: ConnectionState
    reason: str | None = None
    rate: Quantity | None = None

    def to_json(self) -> JsonObject:
        data: JsonObject = {
            "type": self.TYPE.value,
            "connection": self.connection.value,
            "previous": self.previous.value,
        }
        if self.reason:
            data["reason"] = self.reason
        if self.rate is not None:
            data["rate"] = self.rate.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConnectionChanged:
        return cls(
            choice(ConnectionState, data, "connection", "event"),
            choice(ConnectionState, data, "previous", "event"),
            optional_text(data, "reason", "event"),
            optional_quantity(data.get("rate"), where="event.rate"),
        )


@dataclass(frozen=True, slots=True)
class OutOfLibraryObserved(PumpEvent):
    """A rate set at the device that the drug library would not accept outright.

    ``verdict`` is the protocol verdict's JSON (``Verdict.to_dict()``), kept verbatim: the
    journal must hold exactly what the rule engine said (with its library and findings), and
    modelling it again here would be a second, drifting copy of ``protocol.verdict``.
    """

    TYPE: ClassVar[EventType] = EventType.OUT_OF_LIBRARY_OBSERVED
    rate: Quantity
    dose: Quantity | None
    before: RatePoint
    verdict: JsonObject

    def to_json(self) -> JsonObject:
        return {
            "type": self.TYPE.value,
            "rate": self.rate.to_json(),
            "dose": optional_json(self.dose),
            "from": self.before.to_json(),
            "verdict": self.verdict,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutOfLibraryObserved:
        return cls(
            Quantity.from_json(required(data, "rate", "event"), where="event.rate"),
            optional_quantity(data.get("dose"), where="event.dose"),
            RatePoint.from_json(data, "from", "event"),
            dict(obj(data, "verdict", "event")),
        )


@dataclass(frozen=True, slots=True)
class CommandRejected(PumpEvent):
    """The library rejected a command; ``verdict`` is the protocol verdict's JSON, verbatim
    (see :class:`OutOfLibraryObserved`)."""

    TYPE: ClassVar[EventType] = EventType.COMMAND_REJECTED
    command_id: str
    verdict: JsonObject

    def to_json(self) -> JsonObject:
        return {"type": self.TYPE.value, "command_id": self.command_id, "verdict": self.verdict}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommandRejected:
        return cls(text(data, "command_id", "event"), dict(obj(data, "verdict", "event")))


@dataclass(frozen=True, slots=True)
class OverrideAccepted(PumpEvent):
    """A clinician confirmed a command past its confirm-level findings (the verdict's own
    findings JSON, verbatim: see :class:`OutOfLibraryObserved`)."""

    TYPE: ClassVar[EventType] = EventType.OVERRIDE_ACCEPTED
    command_id: str
    clinician: str
    reason: str
    findings: tuple[JsonObject, ...]

    def to_json(self) -> JsonObject:
        return {
            "type": self.TYPE.value,
            "command_id": self.command_id,
            "clinician": self.clinician,
            "reason": self.reason,
            "findings": list(self.findings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OverrideAccepted:
        findings = required(data, "findings", "event")
        if not isinstance(findings, list) or not all(isinstance(f, dict) for f in findings):
            raise PayloadError(f"event.findings: expected a list of objects, got {findings!r}")
        return cls(
            text(data, "command_id", "event"),
            text(data, "clinician", "event"),
            text(data, "reason", "event"),
            tuple(findings),
        )


@dataclass(frozen=True, slots=True)
class VolumeCleared(PumpEvent):
    """The pump's infused-volume counter went back to 0 from ``previous``."""

    TYPE: ClassVar[EventType] = EventType.VOLUME_CLEARED
    previous: Quantity

    def to_json(self) -> JsonObject:
        return {"type": self.TYPE.value, "previous": self.previous.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeCleared:
        return cls(Quantity.from_json(required(data, "previous", "event"), where="event.previous"))


def _library(data: Mapping[str, Any], key: str) -> LibraryIdentity:
    library = obj(data, key, "event")
    where = f"event.{key}"
    return LibraryIdentity(
        text(library, "name", where),
        text(library, "version", where),
        text(library, "sha256", where),
    )


@dataclass(frozen=True, slots=True)
class LibraryChanged(PumpEvent):
    """A new drug library is in force. Journaled once per pump that uses it, with that pump's
    ``drug`` and ``profile`` (without them when no pump is configured)."""

    TYPE: ClassVar[EventType] = EventType.LIBRARY_CHANGED
    before: LibraryIdentity
    after: LibraryIdentity
    via: Via
    by: str | None = None
    signed_by: str | None = None
    drug: str | None = None
    profile: str | None = None

    def to_json(self) -> JsonObject:
        data: JsonObject = {
            "type": self.TYPE.value,
            "from": self.before.to_dict(),
            "to": self.after.to_dict(),
            "via": self.via.value,
        }
        for key, value in (
            ("by", self.by),
            ("signed_by", self.signed_by),
            ("drug", self.drug),
            ("profile", self.profile),
        ):
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LibraryChanged:
        return cls(
            _library(data, "from"),
            _library(data, "to"),
            choice(Via, data, "via", "event"),
            optional_text(data, "by", "event"),
            optional_text(data, "signed_by", "event"),
            optional_text(data, "drug", "event"),
            optional_text(data, "profile", "event"),
        )


EventReader = Callable[[Mapping[str, Any]], PumpEvent]

#: the readers of the event types this module defines (``program_changed`` is read in core)
READERS: Mapping[str, EventReader] = {
    cls.TYPE.value: cls.from_json
    for cls in (
        DeliveryStarted,
        DeliveryStopped,
        RateChanged,
        AlarmRaised,
        AlarmCleared,
        ConnectionChanged,
        OutOfLibraryObserved,
        CommandRejected,
        OverrideAccepted,
        VolumeCleared,
        LibraryChanged,
    )
}


def read_event(data: object, readers: Mapping[str, EventReader] = READERS) -> PumpEvent:
    """The event a journaled ``data`` object holds (its ``pump_id`` key is the row's, and is
    ignored here); :class:`PayloadError` naming the field when it is not one."""
    if not isinstance(data, Mapping):
        raise PayloadError(f"event: expected an object, got {type(data).__name__}")
    kind = text(data, "type", "event")
    reader = readers.get(kind)
    if reader is None:
        raise PayloadError(f"event.type: unknown event type {kind!r}")
    return reader(data)
