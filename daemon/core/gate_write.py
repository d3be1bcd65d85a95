"""The verified write of an accepted command: the driver's before_write hooks that journal the
command durably before anything is sent, the write bounded in time, and the final outcome
journaled with its events before it is published."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog

from daemon.base.events import PumpEvent
from daemon.base.payload import JsonObject
from daemon.base.results import (
    CommandResult,
    DeviceBefore,
    ErrorBody,
    ErrorCode,
    KeptOutcome,
    VerdictJson,
)
from daemon.core.channel import Channel
from daemon.core.channel_types import Saved
from daemon.core.command_life import CommandLife
from daemon.core.gate_request import Plan
from daemon.core.program import Action, ProgramChanged
from daemon.core.replies import ReplyTo, ResultSink, answer_for
from daemon.journal.records import CommandClaim, JournalError
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.command_parse import Command
from drivers.base import BeforeWrite, PumpStatus, RunState, WriteOutcome, WriteResult
from drivers.errors import DriverError
from protocol.verdict import Verdict

log = structlog.get_logger("infusiond.gate")

#: an accepted command ends within this long, whatever the driver does (then ``uncertain``)
COMMAND_DEADLINE_S = 30.0


@dataclass(slots=True)
class Progress:
    """How far one command got: the pump it holds (answered busy meanwhile), and whether its
    ``accepted`` is durable (from then on a fault answers ``uncertain``, never ``rejected``)."""

    life: CommandLife | None = None
    accepted: bool = False
    drift: str | None = None  # why the write hook refused: the pump changed since the check


@dataclass(slots=True)
class Admission:
    """A command accepted outright, not journaled yet: what its claim will record, and the
    task of that claim once the driver's hook started it."""

    answer: CommandResult  # the ``accepted`` result
    command: JsonObject  # the command as received (journaled with its claim)
    received: datetime
    task: asyncio.Task[CommandClaim] | None = None


@dataclass(frozen=True, slots=True)
class Execution:
    """A command ready for its write (once the pump's check lock is released): accepted step
    by step (journaled), or accepted outright (``admission``: claimed by the write's hook)."""

    pump_id: str
    cmd: Command
    fingerprint: str
    plan: Plan
    verdict: Verdict
    reply: ReplyTo | None
    before: DeviceBefore | None
    admission: Admission | None = None


async def refuse_unjournaled(
    send_result: ResultSink, pump_id: str, cmd: Command, reply: ReplyTo | None, exc: JournalError
) -> None:
    """No journal, no command: refused, never executed (nothing of it is durable)."""
    log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
    error = ErrorBody(
        ErrorCode.JOURNAL_UNAVAILABLE,
        "the gateway cannot write its journal (disk full or read-only?); "
        "commands are refused until it can",
    )
    await send_result(pump_id, CommandResult.rejected(cmd.id, error=error), reply)


@dataclass
class Writer:
    """Performs the writes of accepted commands; ``writing`` (shared with the gate) holds the
    command being written at each pump."""

    channels: dict[str, Channel]
    journal: AsyncJournal
    send_result: ResultSink
    writing: dict[str, CommandLife]

    def hold(self, pump_id: str, command_id: str, progress: Progress) -> None:
        """An accepted command takes its pump until it ends (others are answered busy)."""
        life = CommandLife(command_id, asyncio.get_running_loop().time() + COMMAND_DEADLINE_S)
        self.writing[pump_id] = life
        progress.life = life

    async def execute(self, job: Execution, progress: Progress) -> CommandClaim | None:
        """The verified write of an accepted command, then its events and its final outcome
        journaled in ONE transaction (still under the channel's lock, so a poll's events cannot
        take seqs in between) before the answer is published. Always ends the command, except
        for a command accepted outright whose id turns out known when it is claimed (nothing is
        sent): that claim is returned, to be answered as a repeat."""
        pump_id, cmd, plan, verdict = job.pump_id, job.cmd, job.plan, job.verdict
        channel = self.channels[pump_id]
        rate = verdict.rate if plan.action is Action.SET_RATE else None
        events: list[PumpEvent] = []
        async with channel.exclusive():
            saved = channel.save()
            old_rate = channel.status.rate_ml_h if channel.status is not None else None
            channel.driver.before_write = (
                self.sending_marker(job, progress)
                if job.admission is None
                else self.admitting_marker(job, progress)
            )
            try:
                result = await self._write(channel, plan.action, cmd.id, rate, events)
            finally:
                channel.driver.before_write = None
            if progress.drift is not None and result.outcome is WriteOutcome.FAILED:
                result = WriteResult(
                    WriteOutcome.FAILED, result.readback, f"not sent: {progress.drift}"
                )
            if job.admission is not None and not progress.accepted:
                claim = await self._claim_unsent(job, progress, saved)
                if claim is None or not claim.is_new:
                    return claim
            if result.outcome is WriteOutcome.APPLIED and not matches(plan.action, rate, result):
                # a driver that says so without proof: what it absorbed credits the command
                result = WriteResult(
                    WriteOutcome.UNCERTAIN, None, "read-back does not match the command"
                )
            if result.outcome is WriteOutcome.UNCERTAIN:
                if result.readback is None:  # nothing seen: the next poll decides
                    channel.restore(saved)
                    events.clear()
                # else the channel absorbed what the read-back showed (journaled below, judged
                # as a device change unless it is the commanded rate)
                channel.expect_uncertain(cmd.id, old_rate, rate, plan.program)
            if result.outcome is WriteOutcome.APPLIED and plan.program is not None:
                channel.set_program(plan.program)
                events.append(ProgramChanged(cmd.id, plan.program))
            answer = answer_for(channel, cmd.id, result)
            self.writing[pump_id].end(answer.phase)  # an accepted command ends once, here
            log.info("command_result", pump=pump_id, id=cmd.id, phase=answer.phase.value)
            try:
                await self.journal.settle_command(
                    cmd.id,
                    KeptOutcome.of(pump_id, job.fingerprint, answer, job.before),
                    pump_id=pump_id,
                    events=events,
                )
            except JournalError:
                # nothing of it is durable: show the last journaled truth again; the next poll
                # sees the change and attributes it to this command (reconciled)
                channel.restore(saved)
                if result.outcome is WriteOutcome.APPLIED:
                    channel.expect_uncertain(cmd.id, old_rate, rate, plan.program)
                raise
            finally:
                self.writing.pop(pump_id, None)
        await self.send_result(pump_id, answer, job.reply)
        await channel.publish_state()
        return None

    def admitting_marker(self, job: Execution, progress: Progress) -> BeforeWrite:
        """The before_write hook of a command accepted outright: after the driver's pre-read, ONE
        commit claims the id and journals the command, its verdict and ``accepted`` marked as
        being sent; only then may the write go out, and ``accepted`` is published (while the
        write is on its way). A known id (a repeat) or a journal that cannot take it: nothing is
        sent. The commit runs in a task of its own, so that its outcome is known even when the
        write's deadline cancels the wait."""
        admission = job.admission
        assert admission is not None

        async def admit(shown: PumpStatus) -> bool:
            if admission.task is not None:  # asked again for the same command: claimed once
                return progress.accepted
            if refused_for_drift(job, progress, shown):
                return False
            admission.task = asyncio.get_running_loop().create_task(
                self._admit(job, sending=True), name=f"admit:{job.pump_id}:{job.cmd.id}"
            )
            try:
                claim = await asyncio.shield(admission.task)
            except JournalError:
                return False  # refused after the write attempt (see _execute)
            if not claim.is_new:
                return False
            progress.accepted = True
            await self.send_result(job.pump_id, admission.answer, job.reply)
            return True

        return admit

    async def _admit(self, job: Execution, *, sending: bool) -> CommandClaim:
        """Claim + verdict + ``accepted`` (``sending``: the write goes out next) in one job."""
        admission = job.admission
        assert admission is not None
        stored = KeptOutcome.of(job.pump_id, job.fingerprint, admission.answer, job.before)
        verdict = admission.answer.verdict
        assert verdict is not None  # an outright accept carries its verdict
        return await self.journal.admit_command(
            job.cmd.id,
            pump_id=job.pump_id,
            command=admission.command,
            verdict=verdict,
            outcome=stored.marked_sending() if sending else stored,
            ts=admission.received,
        )

    async def _claim_unsent(
        self, job: Execution, progress: Progress, saved: Saved
    ) -> CommandClaim | None:
        """A command accepted outright that was not claimed before a write: nothing was sent
        (the hook said no, or the driver stopped before asking it: the pre-read failed, nothing
        to change...). Returns its claim: new (now ``accepted``, published; the write's result
        follows), known (a repeat: the channel forgets what the pre-read showed, the next poll
        reads it again), or None when the journal refused it (answered ``rejected``)."""
        channel = self.channels[job.pump_id]
        claim: CommandClaim | None = None
        try:
            claim = await self._admitted(job)
        except JournalError as exc:
            await refuse_unjournaled(self.send_result, job.pump_id, job.cmd, job.reply, exc)
        finally:
            if claim is None or not claim.is_new:
                channel.restore(saved)
        if claim is not None and claim.is_new:
            progress.accepted = True
            assert job.admission is not None
            await self.send_result(job.pump_id, job.admission.answer, job.reply)
        return claim

    async def _admitted(self, job: Execution) -> CommandClaim:
        """The claim of a command accepted outright, once the write attempt is over: the hook's
        commit (awaited even if the write's deadline cancelled the hook), or, when the driver
        never asked (it sent nothing), made now without the sending mark."""
        admission = job.admission
        assert admission is not None
        if admission.task is None:
            admission.task = asyncio.get_running_loop().create_task(
                self._admit(job, sending=False), name=f"admit:{job.pump_id}:{job.cmd.id}"
            )
        return await admission.task

    def sending_marker(self, job: Execution, progress: Progress) -> BeforeWrite:
        """What the driver awaits after its pre-read, before the write goes out: the journal
        records (durably) that the write is being sent, so that a restart tells a command that
        never reached the device (``failed``, not sent) from one that may have. When the journal
        cannot take it, or the pump no longer runs what the command was checked against, the
        driver sends nothing and the command ends ``failed``."""

        async def mark(shown: PumpStatus) -> bool:
            if refused_for_drift(job, progress, shown):
                return False
            answer = CommandResult.accepted(job.cmd.id, verdict=VerdictJson(job.verdict.to_dict()))
            stored = KeptOutcome.of(job.pump_id, job.fingerprint, answer, job.before)
            try:
                await self.journal.set_command_outcome(
                    job.cmd.id, stored.marked_sending(), pump_id=job.pump_id
                )
            except JournalError as exc:
                log.critical("journal_unavailable", pump=job.pump_id, id=job.cmd.id, error=str(exc))
                return False
            return True

        return mark

    async def _write(
        self,
        channel: Channel,
        action: Action,
        command_id: str,
        rate: Decimal | None,
        events: list[PumpEvent],
    ) -> WriteResult:
        """The driver's write, bounded in time; whatever it raises becomes ``uncertain`` (the
        write may have reached the device) unless the driver said nothing was sent."""
        try:
            async with asyncio.timeout_at(self.writing[channel.pump_id].deadline):
                return await channel.commands.execute(action, command_id, rate, events=events)
        except TimeoutError:
            detail = f"no verified answer within {COMMAND_DEADLINE_S:g} s"
        except DriverError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a driver bug must still end the command
            log.exception("driver_fault", pump=channel.pump_id, id=command_id)
            detail = f"driver fault: {type(exc).__name__}"
        return WriteResult(WriteOutcome.UNCERTAIN, None, detail)


def refused_for_drift(job: Execution, progress: Progress, shown: PumpStatus) -> bool:
    """True (and ``progress.drift`` says why) when the write's pre-read shows the pump running
    something else than what the command was checked against: a front-panel change since the
    last poll. The check judged the change from the old state (step-up window, taper, the
    current dose), so the write must not go out; the command ends ``failed`` (not sent) and is
    checked again when it is sent again. A stop or pause always goes out: nothing may keep an
    infusion running against a clinician's stop, whatever the pump runs now."""
    before = job.before
    if before is None or job.plan.action in {Action.STOP, Action.PAUSE}:
        return False
    if before.status == shown.state.value and before.rate_ml_h == float(shown.rate_ml_h):
        return False
    progress.drift = (
        f"the pump changed since the command was checked (it was {before.status} at "
        f"{before.rate_ml_h:g} mL/h; now {shown.state.value} at {float(shown.rate_ml_h):g} mL/h); "
        "nothing was sent: check the command again against what the pump runs now"
    )
    log.warning("write_refused_pump_changed", pump=job.pump_id, id=job.cmd.id, why=progress.drift)
    return True


def device_before(channel: Channel) -> DeviceBefore | None:
    """What the device showed before a write (journaled with ``accepted``)."""
    status = channel.status
    if status is None:
        return None
    return DeviceBefore(
        status.state.value,
        float(status.rate_ml_h),
        tuple(sorted(a.value for a in status.alarms)),
    )


def matches(action: Action, rate: Decimal | None, result: WriteResult) -> bool:
    """True when the read-back shows what the command asked for."""
    readback = result.readback
    if readback is None:
        return False
    if action is Action.SET_RATE:
        return rate is not None and readback.rate_ml_h == rate
    wanted = {
        Action.START: RunState.INFUSING,
        Action.STOP: RunState.STOPPED,
        Action.PAUSE: RunState.PAUSED,
    }[action]
    return readback.state is wanted
