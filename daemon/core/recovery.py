"""Each pump's truth rebuilt from the journal at start-up, before anything runs: its program,
its last known rate, the writes a crash interrupted, and its recent dose changes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

import structlog

from daemon.base.errors import PayloadError
from daemon.base.events import (
    ConnectionChanged,
    DeliveryStarted,
    DeliveryStopped,
    PumpEvent,
    RateChanged,
)
from daemon.base.quantities import Quantity
from daemon.base.timefmt import parse_ts
from daemon.core.channel import HISTORY_LEN, Channel
from daemon.core.channel_types import DoseRecord
from daemon.core.program import dose_at, program_from_event
from daemon.core.pump_events import event_from_json
from daemon.journal.records import InterruptedCommand, JournalError, JournalRow
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal

log = structlog.get_logger("infusiond.gateway")

#: how far back a restart reloads dose changes for the time-window rules (step-up window: 4 h)
HISTORY_WINDOW = timedelta(hours=24)


async def recover_pumps(journal: AsyncJournal, channels: dict[str, Channel], now: datetime) -> None:
    """Rebuild each pump's program (the configuration only seeds a pump the journal has never
    seen), its last known rate and the writes a crash interrupted (so a change made while the
    daemon was down is reported, and attributed), and its recent dose changes (so the
    time-window rules hold across a restart)."""
    _note_interrupted_writes(await journal.run(Journal.interrupted_commands), channels)
    for channel in channels.values():
        await _recover_pump(journal, channel, now)


def _note_interrupted_writes(
    items: Iterable[InterruptedCommand], channels: dict[str, Channel]
) -> None:
    for item in items:
        channel = channels.get(item.pump_id or "")
        target = item.target_rate
        if channel is not None and target is not None:
            channel.interrupted_writes[target] = item.command_id


async def _recover_pump(journal: AsyncJournal, channel: Channel, now: datetime) -> None:
    """One pump's program, last known rate and recent dose history, by indexed queries
    (start-up cost does not grow with the journal)."""
    latest = await journal.run(
        Journal.latest_events,
        channel.pump_id,
        ["program_changed", "rate_changed", "connection_changed", "delivery_started"],
    )
    program_row = latest.pop("program_changed", None)
    if program_row is not None:
        _recover_program(channel, program_row)
    # the newest event that names the pump's rate (an offline connection_changed of an older
    # version names none: an older rate_changed or delivery_started then does)
    for row in sorted(latest.values(), key=lambda r: r.n, reverse=True):
        known = _rate_named(_journaled_event(channel, row))
        if known is not None:
            channel.rate_before_restart = Decimal(str(known.value))
            break
    rows = await journal.run(
        Journal.recent_events,
        channel.pump_id,
        ["rate_changed", "delivery_started", "delivery_stopped"],
        since=now - HISTORY_WINDOW,
        limit=HISTORY_LEN,
    )
    for row in rows:
        if program_row is not None and row.n < program_row.n:
            continue  # a dose of the program before this one
        dose = _journaled_dose(channel, _journaled_event(channel, row))
        if dose is not None:
            channel.history.append(DoseRecord(parse_ts(row.ts), dose))


def _journaled_event(channel: Channel, row: JournalRow) -> PumpEvent | None:
    """The typed event of a journaled row, read once; None (logged with the field it gets
    wrong) for a row that does not hold one: such a row names no rate and no dose, as a row
    without them always did, and is never guessed from."""
    try:
        return event_from_json(row.payload.get("event"))
    except PayloadError as exc:
        log.warning("journal_event_unreadable", pump=channel.pump_id, row=row.n, error=str(exc))
        return None


def _rate_named(event: PumpEvent | None) -> Quantity | None:
    """The pump's rate an event names: a rate change's new rate, a start's rate, the rate
    known at a connection change (None when it names none)."""
    if isinstance(event, RateChanged):
        return event.after.rate
    if isinstance(event, DeliveryStarted | ConnectionChanged):
        return event.rate
    return None


def _journaled_dose(channel: Channel, event: PumpEvent | None) -> Decimal | None:
    """The dose a journaled start, stop or rate change set (None: not this program's)."""
    if isinstance(event, DeliveryStopped):
        return Decimal(0)
    if isinstance(event, DeliveryStarted):
        return dose_at(channel.program, Decimal(str(event.rate.value)))
    dose = event.after.dose if isinstance(event, RateChanged) else None
    if dose is None or dose.unit != channel.program.dose_unit:
        return None
    return Decimal(str(dose.value))


def _recover_program(channel: Channel, row: JournalRow) -> None:
    """The program of the pump's latest journaled ``program_changed``, read with the
    configured program as the seed of the fields an older event did not carry (which
    ``event_from_json``, reading the event alone, cannot know)."""
    event = row.payload.get("event", {})
    try:
        program = program_from_event(event, channel.program)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        # a journaled program we cannot read: refuse to guess (the config is older)
        raise JournalError(
            f"journal row {row.n}: program_changed of pump {channel.pump_id} is "
            f"unreadable ({exc}); refusing to start with a guessed program"
        ) from None
    if program != channel.program:
        log.warning(
            "pump_program_from_journal",
            pump=channel.pump_id,
            drug=program.drug,
            concentration=str(program.concentration),
            unit=program.concentration_unit,
            profile=program.profile,
            configured_drug=channel.program.drug,
            configured_concentration=str(channel.program.concentration),
        )
    channel.program = program
