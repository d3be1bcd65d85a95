"""DEC, IPEC and ACM to the EHR over one MLLP connection, with the guarantees of the MQTT side.

Journaled first: every message is built and stored in the journal's ``hl7_outbox`` (with its
MSH-10 control id) before a byte is sent. Events become IPEC/ACM messages by following the
journal itself: a cursor (``meta.hl7_cursor``) moves in the same transaction that stores the
messages of the events behind it, so an event is turned into its messages exactly once, even
across a crash. DEC is built from the latest ``pump.state`` / ``vitals.state`` on every change
of what it reports and every ``dec_period_s``.

Sent in order, one at a time: the next message goes only after the EHR's ACK for the previous
one (MSA-2 must name its control id). ``AA`` deletes it; ``AE``/``AR`` is logged, counted in
:class:`Hl7OutStats` and kept in the outbox with its code (sending it again would be refused
again). No ACK within ``ack_timeout_s``, a garbled answer or a lost connection: reconnect with
capped, jittered backoff and send the same bytes again (same control id), so an EHR outage
loses nothing and a receiver can discard a duplicate by MSH-10.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from daemon.base.config import Config
from daemon.base.payload import JsonObject
from daemon.base.timefmt import parse_ts
from daemon.ihe import messages
from daemon.ihe.messages import Endpoint, Patient
from daemon.journal.records import Hl7Item, JournalRow
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal
from drivers.backoff import Backoff
from drivers.hl7.ack import Ack, AckCode, parse_ack
from drivers.hl7.errors import MessageError
from drivers.hl7.mllp import DEFAULT_MAX_FRAME, Discarded, MllpDecoder, MllpFrame
from protocol.errors import InfusiondError

log = structlog.get_logger("infusiond.hl7_out")

#: the pump.state fields a DEC reports; a change of any of them sends a DEC at once
_DEC_PUMP_KEYS = ("connection", "status", "rate", "dose", "drug", "concentration", "vtbi")
_READ_CHUNK = 4096
#: how far back a clear looks for its raise in the journal (after a restart)
ALARM_LOOKBACK = timedelta(days=7)
ALARM_LOOKBACK_ROWS = 200


class Hl7LinkError(InfusiondError):
    """The EHR link failed (no ACK in time, closed, garbled): reconnect and resend."""


@dataclass(frozen=True, slots=True)
class Hl7OutSettings:
    """What :class:`Hl7Out` needs from the ``[hl7_out]`` configuration."""

    host: str
    port: int
    dec_period_s: float = 60.0
    ack_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_frame: int = DEFAULT_MAX_FRAME
    endpoint: Endpoint = field(default_factory=Endpoint)
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0


@dataclass
class Hl7OutStats:
    """Counters for logs, tests and the bench."""

    sent: int = 0
    acked: int = 0
    refused: int = 0  # AE or AR
    resent: int = 0
    connects: int = 0
    last_refusal: Ack | None = None


class Hl7Out:
    """Follows the journal and the gateway's state, queues DEC/IPEC/ACM, sends them in order."""

    def __init__(
        self,
        settings: Hl7OutSettings,
        journal: AsyncJournal,
        *,
        clock: Callable[[], datetime],
        patient_of: Callable[[str | None], Patient],
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self.patient_of = patient_of
        self.stats = Hl7OutStats()
        self.connected = asyncio.Event()
        #: set while every stored message has been answered (cleared when one is pending)
        self.drained = asyncio.Event()
        self._cursor = 0
        # the latest published ``pump.state`` / ``vitals.state`` payloads: a DEC translates the
        # payload the MQTT side publishes, field by field, into HL7 (an edge of its own)
        self._pumps: dict[str, JsonObject] = {}
        self._beds: dict[str, JsonObject] = {}
        #: what the last DEC of each subject reported (the repr of each reported field)
        self._dec_sent: dict[str, tuple[str, ...]] = {}
        self._dec_due: set[str] = set()
        self._dec_wake = asyncio.Event()
        self._alarms: dict[tuple[str, str], str] = {}

    async def prepare(self) -> None:
        """Read (or start) the event cursor; call before any event can be journaled."""
        self._cursor = await self.journal.run(Journal.hl7_start)

    # -- inputs from the gateway (synchronous: they only note what changed) -------------------

    def pump_state(self, pump_id: str, data: JsonObject) -> None:
        """The pump's latest ``pump.state``: a DEC goes out now if what it reports changed."""
        self._pumps[pump_id] = dict(data)
        key = tuple(repr(data.get(k)) for k in _DEC_PUMP_KEYS)
        if self._dec_sent.get(f"pump:{pump_id}") != key:
            self._dec_due.add(f"pump:{pump_id}")
            self._dec_wake.set()

    def vitals(self, bed: str, data: JsonObject) -> None:
        """A new vitals reading of ``bed``: a DEC goes out now."""
        self._beds[bed] = dict(data)
        self._dec_due.add(f"bed:{bed}")
        self._dec_wake.set()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow events, emit DECs and send, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow_events(), name="hl7-out:events")
            tg.create_task(self._dec_loop(), name="hl7-out:dec")
            tg.create_task(self._periodic_dec(), name="hl7-out:dec-period")
            tg.create_task(self._send_loop(), name="hl7-out:send")

    async def _follow_events(self) -> None:
        added = self.journal.events_added
        while True:
            added.clear()
            rows = await self.journal.run(Journal.hl7_events_after, self._cursor)
            if not rows:
                await added.wait()
                continue
            ids = {
                str(e["command_id"])
                for row in rows
                if isinstance(e := row.payload.get("event"), dict) and e.get("command_id")
            }
            clinicians = await self.journal.run(Journal.hl7_clinicians, ids) if ids else {}
            built = [
                m
                for row in rows
                for m in _buildable(await self._event_messages(row, clinicians), row.n)
            ]
            await self.journal.hl7_enqueue(built, cursor=rows[-1].n)
            self._cursor = rows[-1].n

    async def _alarm_id(self, row: JournalRow, event: JsonObject) -> str:
        """One identity per alarm, from its raise to its clear: ``pump:code:n`` with ``n`` the
        journal row of the raise (the events' ``since`` is not the same on both). After a
        restart between the two, the raise is found in the journal."""
        pump_id = row.pump_id or ""
        code = str((event.get("alarm") or {}).get("code"))
        key = (pump_id, code)
        if event.get("type") == "alarm_raised":
            self._alarms[key] = f"{pump_id}:{code}:{row.n}"
            return self._alarms[key]
        known = self._alarms.pop(key, None)
        if known is not None:
            return known
        since = parse_ts(row.ts) - ALARM_LOOKBACK
        raises = await self.journal.run(
            Journal.recent_events,
            pump_id,
            ["alarm_raised"],
            since=since,
            limit=ALARM_LOOKBACK_ROWS,
        )
        for raised in reversed(raises):
            alarm = (raised.payload.get("event") or {}).get("alarm") or {}
            if raised.n < row.n and alarm.get("code") == code:
                return f"{pump_id}:{code}:{raised.n}"
        return f"{pump_id}:{code}:{row.n}"  # raised before HL7 was enabled: the clear's own

    async def _event_messages(
        self, row: JournalRow, clinicians: Mapping[str, str]
    ) -> list[tuple[str, Callable[[str], bytes]]]:
        event = row.payload.get("event")
        if not isinstance(event, dict) or row.pump_id is None:
            return []
        by = clinicians.get(str(event.get("command_id")))
        if by and not event.get("clinician"):
            event = {**event, "clinician": by}  # who asked for the change (the command's by)
        pump_id = row.pump_id
        kind = event.get("type")
        at = parse_ts(row.ts)
        now = self.clock()
        endpoint = self.settings.endpoint
        state = self._pumps.get(pump_id, {})
        patient = self.patient_of(state.get("bed"))
        if kind in messages.IPEC_EVENTS:
            device = state.get("device")
            return [
                (
                    "ipec",
                    lambda cid: messages.ipec(
                        event,
                        control_id=cid,
                        now=now,
                        at=at,
                        endpoint=endpoint,
                        patient=patient,
                        device=device,
                    ),
                )
            ]
        if kind in messages.ACM_EVENTS:
            alarm_id = await self._alarm_id(row, event)
            return [
                (
                    "acm",
                    lambda cid: messages.acm(
                        event,
                        pump_id=pump_id,
                        alarm_id=alarm_id,
                        control_id=cid,
                        now=now,
                        at=at,
                        endpoint=endpoint,
                        patient=patient,
                    ),
                )
            ]
        return []

    async def _periodic_dec(self) -> None:
        while True:
            await asyncio.sleep(self.settings.dec_period_s)
            self._dec_due.update(f"pump:{p}" for p in self._pumps)
            self._dec_due.update(f"bed:{b}" for b in self._beds)
            self._dec_wake.set()

    async def _dec_loop(self) -> None:
        while True:
            await self._dec_wake.wait()
            self._dec_wake.clear()
            due, self._dec_due = self._dec_due, set()
            built: list[tuple[str, Callable[[str], bytes]]] = []
            now = self.clock()
            endpoint = self.settings.endpoint
            for key in sorted(due):
                kind, _, ident = key.partition(":")
                if kind == "pump" and ident in self._pumps:
                    state = self._pumps[ident]
                    self._dec_sent[key] = tuple(repr(state.get(k)) for k in _DEC_PUMP_KEYS)
                    built.append(
                        (
                            "dec",
                            _dec(
                                messages.dec_pump,
                                state,
                                now,
                                endpoint,
                                self.patient_of(state.get("bed")),
                            ),
                        )
                    )
                elif kind == "bed" and ident in self._beds:
                    built.append(
                        (
                            "dec",
                            _dec(
                                messages.dec_vitals,
                                self._beds[ident],
                                now,
                                endpoint,
                                self.patient_of(ident),
                            ),
                        )
                    )
            built = _buildable(built, None)
            if built:
                await self.journal.hl7_enqueue(built, cursor=None)

    async def _send_loop(self) -> None:
        s = self.settings
        backoff = Backoff(initial_s=s.backoff_initial_s, maximum_s=s.backoff_max_s)
        while True:
            try:
                async with asyncio.timeout(s.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(s.host, s.port)
            except (OSError, TimeoutError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "hl7_out.connect_failed",
                    host=s.host,
                    port=s.port,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            self.stats.connects += 1
            self.connected.set()
            log.info("hl7_out.connected", host=s.host, port=s.port)
            try:
                await self._deliver(reader, writer, backoff)
            except (OSError, Hl7LinkError) as exc:
                log.warning("hl7_out.link_lost", error=str(exc) or type(exc).__name__)
            finally:
                self.connected.clear()
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(backoff.next_delay())

    async def _deliver(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backoff: Backoff
    ) -> None:
        decoder = MllpDecoder(self.settings.max_frame)
        changed = self.journal.hl7_changed
        while True:
            changed.clear()
            pending = await self.journal.run(Journal.hl7_pending)
            if not pending:
                self.drained.set()
                await changed.wait()
                continue
            self.drained.clear()
            for item in pending:
                writer.write(MllpFrame(item.payload).serialize())
                await writer.drain()
                self.stats.sent += 1
                ack = await self._await_ack(reader, decoder, item)
                backoff.reset()
                await self.journal.run(Journal.hl7_settle, item.control_id, ack.code.value)
                if ack.code is AckCode.AA:
                    self.stats.acked += 1
                else:
                    self.stats.refused += 1
                    self.stats.last_refusal = ack
                    log.warning(
                        "hl7_out.refused",
                        control_id=item.control_id,
                        kind=item.kind,
                        ack=ack.code.value,
                        text=ack.text,
                        location=ack.location,
                    )

    async def _await_ack(
        self, reader: asyncio.StreamReader, decoder: MllpDecoder, item: Hl7Item
    ) -> Ack:
        try:
            async with asyncio.timeout(self.settings.ack_timeout_s):
                while True:
                    chunk = await reader.read(_READ_CHUNK)
                    if not chunk:
                        raise Hl7LinkError(
                            f"EHR closed the connection before ACK of {item.control_id}"
                        )
                    for out in decoder.feed(chunk):
                        if isinstance(out, Discarded):
                            log.warning("hl7_out.discarded", reason=out.reason.value, size=out.size)
                            continue
                        ack = _read_ack(out.payload)
                        if ack is not None and ack.control_id == item.control_id:
                            return ack
                        log.warning(
                            "hl7_out.unexpected_answer",
                            expected=item.control_id,
                            got=ack.control_id if ack else None,
                        )
        except TimeoutError:
            self.stats.resent += 1
            raise Hl7LinkError(
                f"no ACK for {item.control_id} within {self.settings.ack_timeout_s:g} s"
            ) from None


class _DecBuilder(Protocol):
    def __call__(
        self,
        data: JsonObject,
        /,
        *,
        control_id: str,
        now: datetime,
        endpoint: Endpoint,
        patient: Patient,
    ) -> bytes: ...


def _dec(
    build: _DecBuilder,
    data: JsonObject,
    now: datetime,
    endpoint: Endpoint,
    patient: Patient,
) -> Callable[[str], bytes]:
    """Bind a DEC builder to its data; the journal supplies the control id."""
    return lambda cid: build(data, control_id=cid, now=now, endpoint=endpoint, patient=patient)


def _buildable(
    messages: list[tuple[str, Callable[[str], bytes]]], row: int | None
) -> list[tuple[str, Callable[[str], bytes]]]:
    """The messages that build: one that cannot (data the builders do not expect) is logged
    and left out here, so that it never fails the journal transaction that stores the others
    and moves the cursor (a stuck cursor would hold back every later message)."""
    kept = []
    for kind, build in messages:
        try:
            build("probe")
        except (KeyError, TypeError, ValueError) as exc:
            log.exception("hl7_out.unbuildable", kind=kind, journal_row=row, error=repr(exc))
            continue
        kept.append((kind, build))
    return kept


def _read_ack(payload: bytes) -> Ack | None:
    try:
        return parse_ack(payload)
    except MessageError as exc:
        log.warning("hl7_out.bad_ack", error=exc.text)
        return None


def from_config(cfg: Config, journal: AsyncJournal, clock: Callable[[], datetime]) -> Hl7Out | None:
    """The gateway's :class:`Hl7Out` for ``[hl7_out]`` (None when it is not configured)."""
    out = cfg.hl7_out
    if out is None:
        return None
    settings = Hl7OutSettings(
        host=out.host,
        port=out.port,
        dec_period_s=out.dec_period_s,
        ack_timeout_s=out.ack_timeout_s,
        max_frame=out.max_frame,
        endpoint=Endpoint(
            sending_application="INFUSIOND",
            sending_facility=out.sending_facility or cfg.gateway_id,
            receiving_application=out.receiving_application,
            receiving_facility=out.receiving_facility,
        ),
    )

    def patient_of(bed: str | None) -> Patient:
        name = bed or "unassigned"
        bed_cfg = cfg.beds.get(name)
        return Patient(name, bed_cfg.patient_id if bed_cfg else None)

    return Hl7Out(settings, journal, clock=clock, patient_of=patient_of)
