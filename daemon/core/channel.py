"""One channel per pump: poll, derive events, publish state, execute verified commands.

A channel owns its driver. It polls at ``poll_period_s``, turns each new snapshot into events
(:mod:`daemon.core.pump_events`), publishes the retained ``pump.state`` whenever it changes and at
least every ``publish_every_s``, and reconnects with capped backoff when the link drops. Polls
and commands never overlap: both run under the channel's lock, and a command that finds the
lock taken waits for the poll; the gate answers ``busy`` to a second command while one is in
flight (one command at a time per pump).

Rate changes observed at the device are handed to ``observe`` (the gate's library check); a
change the library would reject raises the daemon-side ``out_of_library`` alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

import structlog

from daemon.base.events import (
    ChangeSource,
    ConnectionChanged,
    DeliveryStarted,
    DeliveryStopped,
    OutOfLibraryObserved,
    PumpEvent,
    RateChanged,
)
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity
from daemon.core.channel_alarms import PumpAlarms
from daemon.core.channel_commands import CommandExecutor
from daemon.core.channel_state import StatePublisher, state_payload
from daemon.core.channel_types import (
    OFFLINE_ALARM,
    OUT_OF_LIBRARY,
    ChannelConfig,
    DoseConverter,
    DoseRecord,
    Hub,
    ObserveCheck,
    PollHook,
    PollReport,
    Saved,
)
from daemon.core.poll_stats import LATENESS
from daemon.core.program import Program, ProgramChanged
from daemon.core.pump_events import (
    Observation,
    diff,
    rate_changed_event,
    rate_point,
)
from daemon.journal.records import JournalError
from drivers.backoff import Backoff
from drivers.base import (
    ConnectionState,
    Driver,
    Identity,
    PumpStatus,
    RunState,
)
from drivers.errors import DriverError

log = structlog.get_logger("infusiond.channel")

HISTORY_LEN = 64
#: snapshots kept while the journal cannot be written (each distinct one is reported later)
BACKLOG_LEN = 64


@dataclass
class Channel:
    """The live state and loop of one pump; its writes are run by :attr:`commands`."""

    pump_id: str
    driver: Driver
    program: Program
    hub: Hub
    dose_at: DoseConverter
    observe: ObserveCheck | None = None
    config: ChannelConfig = field(default_factory=ChannelConfig)
    connection: ConnectionState = ConnectionState.CONNECTING
    status: PumpStatus | None = None
    identity: Identity | None = None
    last_poll: datetime | None = None
    history: deque[DoseRecord] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    first_poll_done: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    last_progress: float = field(default_factory=time.monotonic)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _failures: int = 0
    _uncertain: tuple[str, Decimal, Decimal] | None = None  # (command id, old, wanted rate)
    _uncertain_program: Program | None = None  # the program an uncertain command would set
    #: the last rate journaled before a restart, and the rates that commands interrupted by it
    #: were writing (rate -> command id): the first snapshot after the restart is compared to
    #: them, so a change made while the daemon was down is still reported, and attributed.
    rate_before_restart: Decimal | None = None
    interrupted_writes: dict[Decimal, str] = field(default_factory=dict)
    _deferred: list[PumpEvent] | None = None  # events held back during execute(events=...)
    _pending: list[PumpEvent] | None = None  # events of the transition in progress
    #: True while the last transition could not be journaled (state shows the last journaled truth)
    journal_behind: bool = False
    #: snapshots read but not yet journaled (a journal fault), oldest first
    _backlog: list[PumpStatus] = field(default_factory=list)
    #: called after every poll (metrics)
    on_poll: PollHook | None = None
    #: the verified writes of this pump (the gate's writer calls ``commands.execute``)
    commands: CommandExecutor = field(init=False)
    #: the alarms its state shows (the daemon's own raised and cleared with their events)
    alarms: PumpAlarms = field(init=False)
    #: when its retained state is published
    publisher: StatePublisher = field(init=False)

    def __post_init__(self) -> None:
        self.commands = CommandExecutor(self.driver, self, self.hub.now)
        self.alarms = PumpAlarms(self.emit, self.hub.now)
        self.publisher = StatePublisher(
            self.pump_id, self.hub.publish_state, self.config.publish_every_s
        )

    def dose_obj(self, rate_ml_h: Decimal) -> Quantity | None:
        """The dose a rate delivers under the current program, as published (6 decimals)."""
        dose = self.dose_at(self.program, rate_ml_h)
        if dose is None:
            return None
        return Quantity(float(round(dose, 6)), self.program.dose_unit)

    def current_dose(self) -> Decimal | None:
        """The running dose (None when stopped or unknown)."""
        if self.status is None or self.status.state is not RunState.INFUSING:
            return None
        return self.dose_at(self.program, self.status.rate_ml_h)

    def state_data(self) -> JsonObject:
        """The ``pump.state`` data (docs/schemas/infusiond.pump.state-1.json)."""
        s = self.status
        return state_payload(
            pump_id=self.pump_id,
            driver_kind=self.driver.kind,
            program=self.program,
            connection=self.connection,
            status=s,
            dose=self.dose_obj(s.rate_ml_h) if s else None,
            identity=self.identity,
            last_poll=self.last_poll,
            alarms=self.alarms.latched.values(),
        )

    async def publish_state(self, *, force: bool = False) -> None:
        """Publish the retained state if it changed, or if the refresh period has passed."""
        await self.publisher.offer(self.state_data(), force=force)

    async def emit(self, event: PumpEvent) -> None:
        """Queue an event of the transition in progress (journaled when it ends), or hold it
        for the caller of ``commands.execute`` to journal together with the command's outcome."""
        if self._deferred is not None:
            self._deferred.append(event)
        elif self._pending is not None:
            self._pending.append(event)
        else:
            await self.hub.emit_events(self.pump_id, [event])

    # -- what a command's write needs (see daemon/core/channel_commands.py) ---------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the channel for one command (the gate answers ``busy`` when taken)."""
        async with self._lock:
            yield

    @contextlib.contextmanager
    def deferring(self, events: list[PumpEvent] | None) -> Iterator[None]:
        """Inside, events go to ``events`` (when given) for the caller to journal with the
        command's outcome, instead of being journaled here."""
        self._deferred = events
        try:
            yield
        finally:
            self._deferred = None

    def note_uncertain(self, command_id: str, old_rate: Decimal, rate: Decimal) -> None:
        """A write answered uncertain: the next snapshot showing ``rate`` settles it."""
        self._uncertain = (command_id, old_rate, rate)

    def expect_uncertain(
        self,
        command_id: str,
        old_rate: Decimal | None,
        rate: Decimal | None,
        program: Program | None,
    ) -> None:
        """A write that may or may not have reached the device: the next snapshot that shows
        ``rate`` is attributed to ``command_id`` (reconciled), with its ``program``."""
        if old_rate is None or rate is None:
            return
        self._uncertain = (command_id, old_rate, rate)
        self._uncertain_program = program

    def set_program(self, program: Program) -> None:
        """Replace the program (after a verified ``program`` command)."""
        self.program = program

    # -- journal first, state second --------------------------------------------------------

    def save(self) -> Saved:
        """The state a transition may change (see :meth:`restore`)."""
        return Saved(
            self.connection,
            self.status,
            self.last_poll,
            dict(self.alarms.latched),
            tuple(self.history),
            self._uncertain,
            self._uncertain_program,
            self._failures,
            self.program,
            self.rate_before_restart,
            dict(self.interrupted_writes),
        )

    def restore(self, saved: Saved) -> None:
        """Undo a transition whose events could not be journaled: the channel shows the last
        journaled truth again, so the next poll derives (and journals) the same change anew."""
        self.connection = saved.connection
        self.status = saved.status
        self.last_poll = saved.last_poll
        self.alarms.latched = dict(saved.alarms)
        self.history.clear()
        self.history.extend(saved.history)
        self._uncertain = saved.uncertain
        self._uncertain_program = saved.uncertain_program
        self._failures = saved.failures
        self.program = saved.program
        self.rate_before_restart = saved.rate_before_restart
        self.interrupted_writes = dict(saved.interrupted_writes)

    @contextlib.asynccontextmanager
    async def _transition(self) -> AsyncIterator[None]:
        """Every state change inside is journaled first (its events in one transaction at the
        end) and kept second: when the journal write fails, the change is undone
        (:meth:`restore`) and JournalError propagates. Inside ``commands.execute`` the events go to
        the caller instead, who journals them with the command's outcome."""
        if self._deferred is not None or self._pending is not None:
            yield
            return
        saved = self.save()
        self._pending = []
        try:
            yield
            events = self._pending
            self._pending = None
            if events:
                await self.hub.emit_events(self.pump_id, events)
        except BaseException:
            self._pending = None
            self.restore(saved)
            raise

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until :meth:`stop`; reconnect with capped backoff.

        Stopping is a flag checked between polls, not only cancellation: on Python 3.11 a
        cancellation that lands while a driver's ``asyncio.wait_for`` completes can be lost
        (pymodbus uses it), and a shutdown must never depend on that race.
        """
        backoff = Backoff(initial_s=0.2, maximum_s=10.0)
        await self.publish_state(force=True)
        self.publisher.spread()
        due: float | None = None  # when the next poll should start (bench lateness only)
        while not self.stopping.is_set():
            if self.connection is not ConnectionState.ONLINE:
                due = None
                if not await self._try_connect():
                    self.first_poll_done.set()
                    self.last_progress = time.monotonic()
                    await self.publish_state()  # keeps the retained state's refresh period
                    await self._pause(backoff.next_delay())
                    continue
                backoff.reset()
            started = time.monotonic()
            late = None if due is None else started - due
            if LATENESS is not None and late is not None:
                LATENESS.record(late)
            due = started + self.config.poll_period_s
            await self.poll_once()
            if self.on_poll is not None:  # metrics (daemon/mqtt/metrics.py)
                self.on_poll(PollReport(self.pump_id, self._failures == 0, late))
            self.first_poll_done.set()
            self.last_progress = time.monotonic()
            elapsed = time.monotonic() - started
            await self._pause(max(0.0, self.config.poll_period_s - elapsed))

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current poll."""
        self.stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    async def _try_connect(self) -> bool:
        try:
            await self.driver.connect()
            self.identity = await self.driver.identity()
            if self.config.watchdog_s:
                await self.driver.configure_watchdog(self.config.watchdog_s)
        except DriverError as exc:
            log.info("pump_connect_failed", pump=self.pump_id, error=str(exc))
            await self._go_offline(str(exc))
            return False
        return True

    async def _go_offline(self, reason: str) -> None:
        if self.connection is ConnectionState.OFFLINE:
            return
        try:
            async with self._transition():
                before = self.connection
                self.connection = ConnectionState.OFFLINE
                # the last rate known (read now, or journaled before a restart and not read
                # since): a restart compares the next reading with it
                known = self.status.rate_ml_h if self.status else self.rate_before_restart
                await self.emit(
                    ConnectionChanged(
                        ConnectionState.OFFLINE,
                        before,
                        reason or None,
                        Quantity.rate(known) if known is not None else None,
                    )
                )
                await self.alarms.set_daemon_alarm(
                    OFFLINE_ALARM, active=True, message=f"no answer from the pump: {reason}"
                )
        except JournalError as exc:
            self._journal_failed(exc)
        await self.publish_state()

    def _journal_failed(self, exc: JournalError) -> None:
        self.journal_behind = True
        log.critical("journal_unavailable", pump=self.pump_id, error=str(exc))

    async def poll_once(self) -> None:
        """One poll: read, diff, journal, publish. DriverErrors count towards going offline.

        Whatever the driver raises is a failed poll: a driver bug (a reply it cannot map) must
        read as an unreadable pump, never as a crash loop that leaves the last state published
        with a fresh ``last_poll``."""
        async with self._lock:
            try:
                status = await self.driver.read_status()
            except Exception as exc:
                if not isinstance(exc, DriverError):
                    log.exception("pump_driver_fault", pump=self.pump_id)
                self._failures += 1
                log.warning("pump_poll_failed", pump=self.pump_id, error=str(exc))
                if self._failures >= self.config.offline_after_failures:
                    await self._go_offline(str(exc) or type(exc).__name__)
                    with contextlib.suppress(DriverError):
                        await self.driver.close()
                return
            await self._absorb_in_order(status)
        await self.publish_state()

    async def _absorb_in_order(self, status: PumpStatus) -> None:
        """Journal and keep ``status``, after every snapshot a journal fault held back (in the
        order they were read): a change the pump made and undid while the journal could not
        be written is still reported, once it can. The backlog is bounded: past
        ``BACKLOG_LEN`` distinct snapshots the oldest are merged (their net change is kept)."""
        backlog = self._backlog
        if not backlog or backlog[-1] != status:
            backlog.append(status)
        while len(backlog) > BACKLOG_LEN:
            del backlog[0]
        while backlog:
            try:
                await self.absorb(backlog[0])
            except JournalError as exc:
                self._journal_failed(exc)
                return
            del backlog[0]
        self.journal_behind = False

    async def absorb(self, status: PumpStatus) -> None:
        """Take a fresh snapshot: events, alarms, reconciliation of an uncertain write; all of
        it journaled before it is kept (raises JournalError, state unchanged, when it cannot)."""
        async with self._transition():
            await self._absorb_unjournaled(status)

    async def _absorb_unjournaled(self, status: PumpStatus) -> None:
        now = self.hub.now()
        self._failures = 0
        self.last_poll = now
        before = Observation(self.connection, self.status)
        old_status = self.status
        if self.connection is not ConnectionState.ONLINE:
            await self.alarms.set_daemon_alarm(OFFLINE_ALARM, active=False)
        self.connection = ConnectionState.ONLINE
        self.alarms.sync_device(status, now)
        self.status = status
        events = diff(before, Observation(ConnectionState.ONLINE, status), self.dose_obj, now)
        device_change: tuple[Decimal, Decimal] | None = None
        for derived in events:
            event = derived
            # starts and stops are dose changes too (the step-up window measures from the start
            # of the infusion, at dose 0 before it): the history holds them
            if isinstance(event, DeliveryStarted):
                self.record_history(now, status.rate_ml_h)
            elif isinstance(event, DeliveryStopped):
                self.history.append(DoseRecord(now, Decimal(0)))
            if isinstance(event, RateChanged) and old_status is not None:
                if self._uncertain is not None:
                    cmd_id, _old, wanted = self._uncertain
                    if status.rate_ml_h == wanted:
                        program, self._uncertain_program = self._uncertain_program, None
                        if program is not None:  # its dose is that of the new program
                            self.program = program
                            await self.emit(ProgramChanged(cmd_id, program))
                            event = rate_changed_event(
                                old_status.rate_ml_h, status.rate_ml_h, self.dose_obj
                            )
                        event = replace(
                            event, source=ChangeSource.COMMAND, command_id=cmd_id, reconciled=True
                        )
                        self.record_history(now, status.rate_ml_h)
                        self._uncertain = None
                    else:
                        device_change = (old_status.rate_ml_h, status.rate_ml_h)
                else:
                    device_change = (old_status.rate_ml_h, status.rate_ml_h)
            await self.emit(event)
        if self._uncertain is not None and old_status is not None:
            # still unchanged after the uncertain write: it did not happen
            cmd_id, old, wanted = self._uncertain
            if status.rate_ml_h == old:
                log.info("uncertain_command_not_applied", pump=self.pump_id, command=cmd_id)
                self._uncertain = None
                self._uncertain_program = None
        if old_status is None and self.rate_before_restart is not None:
            device_change = await self._compare_with_before_restart(status.rate_ml_h, now)
        elif old_status is None and status.state is RunState.INFUSING:
            # first sight of a pump the journal knows no rate of: its connection event carries
            # the rate, and the rate is judged as it runs (limits, not as a titration; not a
            # dose change of the history: when it started is unknown)
            await self._check_observed(status.rate_ml_h, status.rate_ml_h)
        if device_change is not None:
            self.record_history(now, device_change[1])
            await self._check_observed(*device_change)

    async def _compare_with_before_restart(
        self, rate: Decimal, now: datetime
    ) -> tuple[Decimal, Decimal] | None:
        """Report a rate that changed while the daemon was down (once, at the first snapshot):
        by the interrupted command that wrote it, else as a change made at the device."""
        before, self.rate_before_restart = self.rate_before_restart, None
        writes, self.interrupted_writes = self.interrupted_writes, {}
        if before is None or rate == before:
            return None
        command_id = writes.get(rate)
        await self.emit(
            rate_changed_event(
                before,
                rate,
                self.dose_obj,
                source=ChangeSource.COMMAND if command_id else ChangeSource.DEVICE,
                command_id=command_id,
                while_disconnected=True,
            )
        )
        if command_id is not None:
            self.record_history(now, rate)
            return None
        return (before, rate)

    async def _check_observed(self, old: Decimal, new: Decimal) -> None:
        """Judge a change seen at the device by the same rules as a command: any finding of
        severity confirm or reject raises ``out_of_library_observed`` with those findings."""
        if self.observe is None:
            return
        verdict = self.observe(self, old, new)
        if verdict is not None:
            await self.emit(
                OutOfLibraryObserved(
                    Quantity.rate(new), self.dose_obj(new), rate_point(old, self.dose_obj), verdict
                )
            )
        await self.alarms.set_daemon_alarm(
            OUT_OF_LIBRARY,
            active=verdict is not None,
            message="rate set at the pump is outside the drug library",
        )

    def record_history(self, at: datetime, rate: Decimal) -> None:
        dose = self.dose_at(self.program, rate)
        if dose is not None:
            self.history.append(DoseRecord(at, dose))
