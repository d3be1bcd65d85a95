"""After a restart: the final results settled just before it are published again, and the
commands a crash left at ``accepted`` are settled from what each device shows (never sent
again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from daemon.base.errors import PayloadError
from daemon.base.events import PumpEvent
from daemon.base.results import (
    CommandResult,
    ErrorBody,
    ErrorCode,
    FirstOutcome,
    KeptOutcome,
    Phase,
)
from daemon.core.channel import Channel
from daemon.core.command_life import fingerprint
from daemon.core.gate_request import commanded_program
from daemon.core.program import Program, ProgramChanged
from daemon.core.replies import ResultSink, readback_of
from daemon.journal.records import InterruptedCommand, JournalError, OpenClaim
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.command_parse import Command, CommandAction
from drivers.backoff import Backoff
from drivers.base import ConnectionState
from protocol.library import Library

log = structlog.get_logger("infusiond.gate")

#: after a restart, final results of commands received this recently are published again (a
#: crash between journaling a result and publishing it must not leave a client at ``accepted``)
RESULT_REPEAT_WINDOW = timedelta(minutes=5)


@dataclass
class Reconciler:
    """Settles the commands a restart interrupted; ``reconciling`` (shared with the gate) holds
    the pumps answered busy until theirs is settled."""

    channels: dict[str, Channel]
    journal: AsyncJournal
    send_result: ResultSink
    now: Callable[[], datetime]
    reconciling: set[str]
    _interrupted: list[tuple[InterruptedCommand, StoredCommand]] = field(default_factory=list)
    _recent: list[InterruptedCommand] = field(default_factory=list)
    _open: list[OpenClaim] = field(default_factory=list)
    #: open claims settled at start, whose ``rejected`` is published once the bridge is up
    _settled_open: list[OpenClaim] = field(default_factory=list)

    async def load_interrupted(self) -> None:
        """Read the commands a crash left at ``accepted`` (before any command is admitted):
        their pumps answer ``busy`` until :meth:`reconcile_interrupted` has settled them.

        First, an id claimed with no outcome (the process stopped, or a journal write failed,
        between the claim and the verdict) is settled ``rejected`` (``internal_error``): such a
        command never reached a device (nothing is sent before ``accepted`` is durable), and a
        duplicate of it must be told a first outcome, never an empty one. When the journal
        cannot take that now, :meth:`reconcile_interrupted` tries again (a repeat meanwhile is
        refused ``busy``: no outcome is known yet)."""
        self._open, interrupted = await self.journal.run(_unfinished)
        try:
            await self._reject_open_claims()
        except JournalError as exc:
            log.critical("journal_unavailable", open_claims=len(self._open), error=str(exc))
        self._interrupted = [
            (item, StoredCommand.read(item))
            for item in interrupted
            if item.pump_id is not None and item.pump_id in self.channels
        ]
        self.reconciling.update(item.pump_id for item, _ in self._interrupted if item.pump_id)
        self._recent = await self.journal.run(
            Journal.settled_since, self.now() - RESULT_REPEAT_WINDOW
        )

    async def _reject_open_claims(self) -> None:
        outcomes = [(claim, _never_checked(claim)) for claim in self._open]
        if outcomes:
            await self.journal.run(_record_outcomes, outcomes, self.now())
        for claim, _ in outcomes:
            log.warning("command_claim_settled", pump=claim.pump_id, id=claim.command_id)
        self._settled_open.extend(self._open)
        self._open = []

    async def reconcile_interrupted(self, library: Library) -> None:
        """Settle commands a crash left at ``accepted`` (sent or not, never verified) from what
        each device shows after its first poll, compared with what it showed before the write
        (journaled with ``accepted``): ``applied`` only when the device moved from its state
        before to the commanded one; ``failed`` (code ``interrupted``) when it is verified
        unchanged; ``uncertain`` when it cannot be read or shows something else. Nothing is
        sent to a device again; the result carries ``"reconciled": true`` and becomes what a
        duplicate of the id is told.

        First, the final results of the commands settled just before the restart are published
        again (``"repeated": true``): one may have been journaled and never published; then the
        ``rejected`` of each id claimed but never checked (settled at start) is published."""
        recent, self._recent = self._recent, []
        for item in recent:
            if item.pump_id in self.channels:
                answer = item.outcome.repeated(item.command_id)
                await self.send_result(item.pump_id or "", answer, None)
        backoff = Backoff(initial_s=0.5, maximum_s=30.0)
        while self._open:
            try:
                await self._reject_open_claims()
            except JournalError as exc:
                log.critical("journal_unavailable", open_claims=len(self._open), error=str(exc))
                await asyncio.sleep(backoff.next_delay())
        settled, self._settled_open = self._settled_open, []
        for claim in settled:  # a sender waiting on the id hears that it was not executed
            if claim.pump_id in self.channels:
                answer = CommandResult.rejected(claim.command_id, error=NEVER_CHECKED)
                await self.send_result(claim.pump_id or "", answer, None)
        try:
            for item, command in self._interrupted:
                backoff = Backoff(initial_s=0.5, maximum_s=30.0)
                while True:
                    try:
                        await self._reconcile_one(library, item, command)
                        break
                    except JournalError as exc:  # the pump stays busy; try again
                        log.critical(
                            "journal_unavailable",
                            pump=item.pump_id,
                            id=item.command_id,
                            error=str(exc),
                        )
                        await asyncio.sleep(backoff.next_delay())
        finally:
            self._interrupted = []

    async def _reconcile_one(
        self, library: Library, item: InterruptedCommand, command: StoredCommand
    ) -> None:
        pump_id = item.pump_id or ""
        channel = self.channels[pump_id]
        await channel.first_poll_done.wait()
        answer = replace(_settle(channel, item, command), reconciled=True)
        program = command.program(library, channel)
        events: list[PumpEvent] = []
        if answer.phase is Phase.APPLIED and program is not None and channel.status is not None:
            events.append(ProgramChanged(item.command_id, program))
            answer = replace(answer, readback=readback_of(channel, channel.status, program))
        stored = KeptOutcome.of(
            pump_id, item.outcome.fingerprint or command.fingerprint, answer, item.outcome.before
        )
        # the outcome and the program it set: durable together, then kept
        await self.journal.settle_command(item.command_id, stored, pump_id=pump_id, events=events)
        if events and program is not None:
            channel.set_program(program)
        log.info("command_reconciled", pump=pump_id, id=item.command_id, phase=answer.phase.value)
        self.reconciling.discard(pump_id)
        await self.send_result(pump_id, answer, None)


def _unfinished(journal: Journal) -> tuple[list[OpenClaim], list[InterruptedCommand]]:
    """The claims without an outcome and the commands left at ``accepted``: one read job."""
    return journal.open_claims(), journal.interrupted_commands()


#: why a command claimed but never checked is ``rejected`` (see :class:`OpenClaim`)
NEVER_CHECKED = ErrorBody(
    ErrorCode.INTERNAL_ERROR,
    "the gateway stopped before it checked this command; it was not executed",
)


def _never_checked(claim: OpenClaim) -> KeptOutcome:
    """The outcome of a command claimed but never checked (see :class:`OpenClaim`)."""
    fp = None if claim.command is None else fingerprint(claim.command)
    return KeptOutcome(FirstOutcome(Phase.REJECTED, error=NEVER_CHECKED, pump=claim.pump_id), fp)


def _record_outcomes(
    journal: Journal, outcomes: list[tuple[OpenClaim, KeptOutcome]], ts: datetime
) -> None:
    """Every outcome in one job (one transaction, one fsync)."""
    for claim, outcome in outcomes:
        journal.set_command_outcome(claim.command_id, outcome, pump_id=claim.pump_id, ts=ts)


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """The command an interrupted id was claimed with, read once: its ``action`` (None when
    not recorded: a command claimed by an older version, or one that named none), the command
    itself when this version still parses it (an older one it does not is settled from its
    verdict alone, as always), and its ``fingerprint`` ("" when not recorded)."""

    action: CommandAction | None
    command: Command | None
    fingerprint: str

    @classmethod
    def read(cls, item: InterruptedCommand) -> StoredCommand:
        """``PayloadError`` naming the field when the stored command names an action this
        version does not know (nothing is settled from a guess)."""
        data = item.command
        if data is None:
            return cls(None, None, "")
        action = data.get("action")
        if action is not None and action not in CommandAction.__members__.values():
            where = f"journal commands[{item.command_id!r}].command.action"
            raise PayloadError(f"{where}: unknown action {action!r}")
        try:
            command: Command | None = Command.model_validate(data)
        except ValueError:
            command = None
        return cls(action, command, fingerprint(data) if data else "")

    def program(self, library: Library, channel: Channel) -> Program | None:
        """The program an interrupted ``program`` command would have set (None otherwise)."""
        cmd = self.command
        if self.action != "program" or cmd is None or cmd.program is None:
            return None
        return commanded_program(library, channel.program, cmd)


def _interrupted(message: str) -> ErrorBody:
    return ErrorBody(ErrorCode.INTERRUPTED, message)


def _settle(channel: Channel, item: InterruptedCommand, command: StoredCommand) -> CommandResult:
    status = channel.status
    cid = item.command_id
    if status is None or channel.connection is not ConnectionState.ONLINE:
        return CommandResult.uncertain(
            cid,
            error=_interrupted(
                "the gateway restarted during the write and the pump cannot be read; check the pump"
            ),
        )
    readback = readback_of(channel, status)
    # None: written by a version that did not record the device's state before the write: a
    # device at the target may have been there already, so it never proves the write
    before = item.outcome.before
    found = item.target_rate
    target = None if found is None else float(found)
    if before is not None and not item.outcome.sending:
        return CommandResult.failed(
            cid,
            error=_interrupted(
                "the gateway restarted before the write was sent: nothing reached the pump"
            ),
            readback=readback,
        )
    was_state, was_rate = (None, None) if before is None else (before.status, before.rate_ml_h)
    state = status.state.value
    rate = float(status.rate_ml_h)
    # an alarm raised since (a power reset, an occlusion...) can change the device by itself:
    # then the change proves nothing about the write
    new_alarms = sorted({a.value for a in status.alarms} - set(before.alarms if before else ()))
    wanted_state = {"stop": "stopped", "pause": "paused", "start": "infusing"}.get(
        command.action or ""
    )
    if wanted_state is not None:
        took = state == wanted_state and was_state is not None and was_state != wanted_state
        unchanged = state == was_state if was_state is not None else state != wanted_state
    else:
        at_target = target is not None and rate == target
        took = at_target and was_rate is not None and was_rate != target
        unchanged = rate == float(was_rate) if was_rate is not None else not at_target
    if took and not new_alarms:
        return CommandResult.applied(cid, readback=readback)
    if took:
        return CommandResult.uncertain(
            cid,
            error=_interrupted(
                "the gateway restarted during the write; the pump shows the commanded state but "
                f"also raised {', '.join(new_alarms)}, which may have caused it: check the pump"
            ),
        )
    if unchanged:
        return CommandResult.failed(
            cid,
            error=_interrupted(
                "the gateway restarted before it could verify the write and the pump shows no "
                "change made by it: not reported applied"
            ),
            readback=readback,
        )
    return CommandResult.uncertain(
        cid,
        error=_interrupted(
            "the gateway restarted during the write and the pump now shows neither its state "
            "before nor the commanded one; check the pump"
        ),
    )
