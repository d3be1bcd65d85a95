"""The command gate: every rate change passes the drug library before it reaches a pump.

Pipeline for one MQTT command (docs/integration-guide.md): parse (size, JSON, schema, expiry,
retained) -> known pump -> remote control enabled -> clinician allowed -> not busy -> id not
seen before (journal) -> check request built from the channel's context -> verdict:

- ``reject``: answered ``rejected`` with the verdict; nothing reaches the driver.
- ``confirm`` without a valid confirmation: ``needs_confirmation`` with a token valid 120 s;
  the same command re-sent (same id, or a new id) with ``confirm: {token, reason}`` executes
  and the override is journaled and announced (``override_accepted``).
- ``accept``: ``accepted``, then the verified write -> ``applied`` / ``failed`` / ``uncertain``.

Admission errors (unknown pump, control disabled, not authorized, busy) are journaled but do
not claim the command id: nothing was executed, so the sender may retry with the same id.

Commands to one pump are checked one after the other (a per-pump lock, at most
``MAX_WAITING`` waiting); ``busy`` means a write is in progress at that pump, never that a
previous command was merely checked or rejected. An accepted command always ends: whatever the
driver raises or however long it hangs (``COMMAND_DEADLINE_S``), the answer is ``applied`` only
with a matching read-back, ``failed`` only when the device is verified unchanged, else
``uncertain`` (reconciled from the next poll and reported by event).

Ids are unique per gateway: the same id with the same payload (``fingerprint``) is a
``duplicate`` whose ``first`` names the pump; with another payload or pump it is ``rejected``
with ``id_conflict``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from pydantic import ValidationError

from daemon.base.timefmt import at_ms
from daemon.base.topics import capped_id
from daemon.core.channel import Channel, Saved
from daemon.core.command_life import CommandLife, fingerprint, public_first
from daemon.core.program import Action, Program, program_changed
from daemon.journal.records import CommandClaim, InterruptedCommand, JournalError, JournalKind
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.command_parse import (
    Command,
    ErrorCode,
    Phase,
    Rejection,
    accepted,
    applied,
    duplicate,
    error_body,
    failed,
    needs_confirmation,
    outcome_of,
    parse_command,
    rejected,
    uncertain,
)
from daemon.mqtt.refusals import RefusalDesk
from daemon.mqtt.signing import SignaturePolicy
from drivers.backoff import Backoff
from drivers.base import (
    BeforeWrite,
    ConnectionState,
    Outcome,
    PumpStatus,
    RunState,
    WriteResult,
)
from drivers.errors import DriverError
from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.library import Library
from protocol.request import HistoryEntry, parse_request
from protocol.verdict import Verdict

log = structlog.get_logger("infusiond.gate")

CONFIRM_TTL = timedelta(seconds=120)
#: an accepted command ends within this long, whatever the driver does (then ``uncertain``)
COMMAND_DEADLINE_S = 30.0
#: after a restart, final results of commands received this recently are published again (a
#: crash between journaling a result and publishing it must not leave a client at ``accepted``)
RESULT_REPEAT_WINDOW = timedelta(minutes=5)
#: commands waiting for their pump's check; more are answered ``busy`` at once (flood bound)
MAX_WAITING = 8
#: validated history entries kept for reuse (64 per pump at most are in use at a time)
HISTORY_MODELS_MAX = 16_384
ResultSink = Callable[[str, dict[str, Any], "ReplyTo | None"], Awaitable[None]]
VitalsLookup = Callable[[str | None], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """MQTT v5 request/response properties to honour on the answers."""

    response_topic: str
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Control:
    """Remote control policy: off by default; when on, only allowlisted clinicians
    (``"*"`` admits any clinician id: the demo's simulated pumps use it)."""

    enabled: bool = False
    allowlist: frozenset[str] = frozenset()
    signatures: SignaturePolicy = field(default_factory=SignaturePolicy)


@dataclass(frozen=True, slots=True)
class _Pending:
    pump_id: str
    fingerprint: str
    expires: datetime


@dataclass
class Gate:
    """Admits, checks and executes commands; one in flight per pump."""

    library: Library
    channels: dict[str, Channel]
    journal: AsyncJournal
    send_result: ResultSink
    now: Callable[[], datetime]
    vitals_for: VitalsLookup = lambda _bed: None
    control: Control = field(default_factory=Control)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _answers: set[asyncio.Task[None]] = field(default_factory=set)
    _refusals: RefusalDesk | None = None  # made on the first refusal (daemon/mqtt/refusals.py)
    _tokens: dict[str, _Pending] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _waiting: dict[str, int] = field(default_factory=dict)
    #: pump -> the command being written there (accepted, not yet settled)
    _writing: dict[str, CommandLife] = field(default_factory=dict)
    #: pumps whose command interrupted by a restart is not settled yet (answered busy)
    reconciling: set[str] = field(default_factory=set)
    _interrupted: list[InterruptedCommand] = field(default_factory=list)
    _recent: list[InterruptedCommand] = field(default_factory=list)
    #: check-request history entries already validated (see _history_entry)
    _history_models: dict[tuple[datetime, str, str], HistoryEntry] = field(default_factory=dict)

    # -- admission (synchronous, so that busy is decided in arrival order) -------------------

    def submit(
        self, pump_id: str, payload: bytes, *, retained: bool, reply: ReplyTo | None
    ) -> None:
        """Take one raw command; answers are published by tasks this gate keeps."""
        now = self.now()
        parsed = parse_command(
            payload, now=now, retained=retained, signatures=self.control.signatures
        )
        if isinstance(parsed, Rejection):
            self._answer(pump_id, rejected(parsed.id, error=parsed), reply, parsed.message)
            return
        error = self._admission_error(pump_id, parsed)
        if error is not None:
            self._answer(pump_id, rejected(parsed.id, error=error), reply, error["message"])
            return
        self._waiting[pump_id] = self._waiting.get(pump_id, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._run_guarded(pump_id, parsed, reply), name=f"command:{pump_id}:{parsed.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit_order(
        self, pump_id: str, command: dict[str, Any], *, order_id: str
    ) -> dict[str, Any]:
        """A hospital order (IHE PCD PIV) as ``command``: the same parsing, admission and
        verdict as an MQTT command, but it never reaches the pump. A verdict other than reject
        becomes ``needs_confirmation`` (with a token, whatever the verdict) carrying
        ``"source": "piv"``, the order id and the command to confirm; a reject is ``rejected``
        with its findings. The answer is journaled, published and returned (for RRG^O16)."""
        now = self.now()
        tag = {"source": "piv", "order_id": order_id}
        parsed = parse_command(json.dumps(command).encode(), now=now)
        if isinstance(parsed, Rejection):
            answer = rejected(parsed.id, error=parsed) | tag
            self._answer(pump_id, answer, None, parsed.message)
            return answer
        error = self._admission_error(pump_id, parsed)
        if error is not None:
            answer = rejected(parsed.id, error=error) | tag
            self._answer(pump_id, answer, None, error["message"])
            return answer
        command_json = parsed.to_json()
        fp = fingerprint(command_json)
        claim = await self.journal.claim_command(
            parsed.id, pump_id=pump_id, command=command_json, ts=now
        )
        if not claim.is_new:
            answer = duplicate(parsed.id, first=public_first(claim.first or {})) | tag
            await self.send_result(pump_id, answer, None)
            return answer
        try:
            plan = self._plan(self.channels[pump_id], parsed, now)
        except RequestError as exc:
            answer = rejected(parsed.id, error=error_body(ErrorCode.BAD_REQUEST, str(exc))) | tag
            await self._finish(pump_id, parsed, fp, answer, None)
            return answer
        verdict = evaluate(self.library, plan.request)
        verdict_json = verdict.to_dict()
        await self.journal.append(
            JournalKind.VERDICT, {"id": parsed.id, "verdict": verdict_json, **tag}, pump_id=pump_id
        )
        if verdict.verdict == "reject":
            answer = rejected(parsed.id, verdict=verdict_json) | tag
        else:
            self._expire_tokens(now)
            token = secrets.token_urlsafe(18)
            expires = now + CONFIRM_TTL
            self._tokens[token] = _Pending(pump_id, plan.fingerprint, expires)
            answer = (
                needs_confirmation(
                    parsed.id, verdict=verdict_json, confirm_token=token, expires_at=expires
                )
                | tag
                | {"command": command}
            )
        await self._finish(pump_id, parsed, fp, answer, None)
        return answer

    def _admission_error(self, pump_id: str, cmd: Command) -> dict[str, str] | None:
        if pump_id not in self.channels:
            return error_body(ErrorCode.UNKNOWN_PUMP, f"no pump {pump_id!r} on this gateway")
        if not self.control.enabled:
            return error_body(
                ErrorCode.CONTROL_DISABLED, "remote control is disabled on this gateway"
            )
        allowed = self.control.allowlist
        if "*" not in allowed and cmd.by.clinician not in allowed:
            return error_body(
                ErrorCode.NOT_AUTHORIZED,
                f"by.clinician {cmd.by.clinician!r} is not allowed to command pumps here",
            )
        return self._busy(pump_id) or (
            error_body(ErrorCode.BUSY, f"pump {pump_id}: too many commands waiting; retry later")
            if self._waiting.get(pump_id, 0) >= MAX_WAITING
            else None
        )

    def _busy(self, pump_id: str) -> dict[str, str] | None:
        writing = self._writing.get(pump_id)
        if writing is not None:
            return error_body(
                ErrorCode.BUSY,
                f"pump {pump_id} is executing command {writing.command_id!r}; retry when it "
                "has ended",
            )
        channel = self.channels[pump_id]
        if channel.status is None or channel.connection is not ConnectionState.ONLINE:
            return error_body(
                ErrorCode.BUSY,
                f"pump {pump_id} is {channel.connection.value}: its state has not been read "
                "since the gateway started or it stopped answering; nothing was sent",
            )
        if channel.journal_behind:
            return error_body(
                ErrorCode.BUSY,
                f"pump {pump_id}: its latest reading is not journaled yet (journal unavailable); "
                "nothing is checked against an older state",
            )
        if pump_id in self.reconciling:
            return error_body(
                ErrorCode.BUSY,
                f"pump {pump_id} is settling a command interrupted by a restart; retry shortly",
            )
        return None

    def _answer(self, pump_id: str, data: dict[str, Any], reply: ReplyTo | None, why: str) -> None:
        # Refusals go through one rate-limited desk (daemon/mqtt/refusals.py), never a task each.
        if self._refusals is None:
            self._refusals = RefusalDesk(
                journal=self.journal, refuse_one=self._refuse, answer=self.send_result
            )
        worker = self._refusals.refuse(pump_id, data, reply, why)
        if worker is not None:
            self._answers.add(worker)
            worker.add_done_callback(self._answers.discard)

    async def _refuse(self, pump_id: str, data: dict[str, Any], reply: ReplyTo | None) -> None:
        shown = capped_id(pump_id)  # a topic can carry a 65,000-character pump id
        try:
            await self.journal.append(
                JournalKind.COMMAND, {"pump": shown, "answer": data}, pump_id=shown
            )
        except JournalError as exc:  # the refusal still goes out: nothing was executed
            log.critical("journal_unavailable", pump=shown, id=data.get("id"), error=str(exc))
        await self.send_result(pump_id, data, reply)

    async def drain(self) -> None:
        """Wait for every command and answer in progress (used at shutdown and in tests)."""
        pending = [*self._tasks, *self._answers]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- the checked path ---------------------------------------------------------------------

    async def _run_guarded(self, pump_id: str, cmd: Command, reply: ReplyTo | None) -> None:
        """Check under the pump's lock, then write after releasing it (so that a command
        arriving meanwhile is answered ``busy`` at once), and an answer whatever goes wrong half
        way: before the write ``rejected`` (nothing was executed), after it ``uncertain`` (the
        poll reconciles). This task is the supervisor of one command: it catches everything."""
        progress = _Progress()
        lock = self._locks.setdefault(pump_id, asyncio.Lock())
        waiting = True
        try:
            async with lock:
                self._waiting[pump_id] -= 1
                waiting = False
                busy = self._busy(pump_id)
                if busy is not None:
                    self._answer(pump_id, rejected(cmd.id, error=busy), reply, busy["message"])
                    return
                job = await self._run(pump_id, cmd, reply, progress)
            if job is not None and (known := await self._execute(job, progress)) is not None:
                # accepted outright, but the id turned out known when it was claimed (after the
                # pre-read; nothing was sent): answered as any repeat
                async with lock:
                    job = await self._repeat(
                        pump_id,
                        cmd,
                        fp=job.fingerprint,
                        claim=known,
                        plan=job.plan,
                        verdict=job.verdict,
                        reply=reply,
                        progress=progress,
                    )
                if job is not None:
                    await self._execute(job, progress)
        except JournalError as exc:
            log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
            body = error_body(ErrorCode.JOURNAL_UNAVAILABLE, f"journal write failed: {exc}")
            answer = (
                uncertain(cmd.id, error=body) if progress.accepted else rejected(cmd.id, error=body)
            )
            await self.send_result(pump_id, answer, reply)
        except Exception as exc:
            log.exception("command_crashed", pump=pump_id, id=cmd.id)
            body = error_body(ErrorCode.INTERNAL_ERROR, f"gateway fault: {type(exc).__name__}")
            answer = (
                uncertain(cmd.id, error=body) if progress.accepted else rejected(cmd.id, error=body)
            )
            await self.send_result(pump_id, answer, reply)
        finally:
            if waiting:
                self._waiting[pump_id] -= 1
            # release the pump only if this command holds it (a repeated id does not)
            if progress.life is not None and self._writing.get(pump_id) is progress.life:
                del self._writing[pump_id]

    async def _run(
        self, pump_id: str, cmd: Command, reply: ReplyTo | None, progress: _Progress
    ) -> _Execution | None:
        """Check one command (under the pump's lock). Returns the write to perform once the
        lock is released, or None when the command ended here (rejected, confirmation asked,
        duplicate...)."""
        channel = self.channels[pump_id]
        now = self.now()
        command_json = cmd.to_json()
        fp = fingerprint(command_json)
        # The check is pure and fast: decide before claiming. A command the library accepts
        # outright is claimed by the driver's before_write hook, after its pre-read: claim,
        # verdict, ``accepted`` and the sending mark in ONE durable transaction before the
        # write (docs/performance.md). Anything else takes the step-by-step path below.
        plan: _Plan | RequestError
        try:
            plan = self._plan(channel, cmd, now)
        except RequestError as exc:
            plan = exc
        verdict: Verdict | None = None
        outright: tuple[_Plan, Verdict] | None = None
        if isinstance(plan, _Plan):
            verdict = evaluate(self.library, plan.request)
            if verdict.verdict == "accept" and (
                plan.action is not Action.SET_RATE or verdict.rate is not None
            ):
                outright = (plan, verdict)
        before = _device_before(channel)
        if outright:
            # the pump is this command's from now on (others are answered busy); nothing is
            # journaled yet: the write's hook claims it (see _execute)
            self._hold(pump_id, cmd.id, progress)
            admission = _Admission(
                accepted(cmd.id, verdict=outright[1].to_dict()), command_json, now
            )
            return _Execution(pump_id, cmd, fp, *outright, reply, before, admission)
        try:
            claim = await self.journal.claim_command(
                cmd.id, pump_id=pump_id, command=command_json, ts=now
            )
        except JournalError as exc:  # no journal, no command: refuse, never execute
            await self._refuse_unjournaled(pump_id, cmd, reply, exc)
            return None
        if not claim.is_new:
            return await self._repeat(
                pump_id,
                cmd,
                fp=fp,
                claim=claim,
                plan=plan,
                verdict=verdict,
                reply=reply,
                progress=progress,
            )
        return await self._check_stepwise(
            pump_id=pump_id,
            cmd=cmd,
            fp=fp,
            plan=plan,
            verdict=verdict,
            reply=reply,
            progress=progress,
        )

    async def _refuse_unjournaled(
        self, pump_id: str, cmd: Command, reply: ReplyTo | None, exc: JournalError
    ) -> None:
        """No journal, no command: refused, never executed (nothing of it is durable)."""
        log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
        error = error_body(
            ErrorCode.JOURNAL_UNAVAILABLE,
            "the gateway cannot write its journal (disk full or read-only?); "
            "commands are refused until it can",
        )
        await self.send_result(pump_id, rejected(cmd.id, error=error), reply)

    async def _repeat(
        self,
        pump_id: str,
        cmd: Command,
        *,
        fp: str,
        claim: CommandClaim,
        plan: _Plan | RequestError,
        verdict: Verdict | None,
        reply: ReplyTo | None,
        progress: _Progress,
    ) -> _Execution | None:
        """A known id (its duplicate row is journaled): ``id_conflict``, ``duplicate``, or the
        confirmation of a command that asked for one, resumed step by step."""
        first = claim.first or {}
        if self._id_conflict(pump_id, cmd, fp, first, reply):
            return None
        resumable = first.get("phase") == Phase.NEEDS_CONFIRMATION and cmd.confirm
        if not resumable:
            await self.send_result(pump_id, duplicate(cmd.id, first=public_first(first)), reply)
            return None
        return await self._check_stepwise(
            pump_id=pump_id,
            cmd=cmd,
            fp=fp,
            plan=plan,
            verdict=verdict,
            reply=reply,
            progress=progress,
        )

    async def _check_stepwise(
        self,
        *,
        pump_id: str,
        cmd: Command,
        fp: str,
        plan: _Plan | RequestError,
        verdict: Verdict | None,
        reply: ReplyTo | None,
        progress: _Progress,
    ) -> _Execution | None:
        """Every command not accepted outright: its verdict, then reject, confirmation asked,
        override, or accepted (each step journaled before it is answered)."""
        before = _device_before(self.channels[pump_id])
        if isinstance(plan, RequestError):
            await self._finish(
                pump_id,
                cmd,
                fp,
                rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, str(plan))),
                reply,
            )
            return None
        verdict = verdict or evaluate(self.library, plan.request)
        verdict_json = verdict.to_dict()
        await self.journal.append(
            JournalKind.VERDICT, {"id": cmd.id, "verdict": verdict_json}, pump_id=pump_id
        )
        if verdict.verdict == "reject":
            await self._finish(pump_id, cmd, fp, rejected(cmd.id, verdict=verdict_json), reply)
            await self._emit(
                pump_id, {"type": "command_rejected", "command_id": cmd.id, "verdict": verdict_json}
            )
            return None
        if verdict.verdict == "confirm" and not await self._confirmed(
            pump_id=pump_id, cmd=cmd, fp=fp, plan=plan, verdict=verdict, reply=reply
        ):
            return None
        if plan.action is Action.SET_RATE and verdict.rate is None:
            await self._finish(
                pump_id,
                cmd,
                fp,
                rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, "no rate computed")),
                reply,
            )
            return None
        answer = accepted(cmd.id, verdict=verdict_json)
        await self.journal.set_command_outcome(
            cmd.id, self._stored(pump_id, fp, answer, before), pump_id=pump_id
        )
        self._hold(pump_id, cmd.id, progress)
        progress.accepted = True
        await self.send_result(pump_id, answer, reply)
        return _Execution(pump_id, cmd, fp, plan, verdict, reply, before)

    def _id_conflict(
        self,
        pump_id: str,
        cmd: Command,
        fp: str,
        first: dict[str, Any],
        reply: ReplyTo | None,
    ) -> bool:
        """Answer ``id_conflict`` when a known id comes with another payload or pump."""
        first_pump = first.get("pump")
        first_fp = first.get("fingerprint")
        other_pump = first_pump is not None and first_pump != pump_id
        other_payload = bool(first_fp) and first_fp != fp
        if not (other_pump or other_payload):
            return False
        what = f"pump {first_pump}" if other_pump else "another payload"
        message = (
            f"id: {cmd.id!r} was already used for {what} (first command on pump "
            f"{first_pump}, phase {first.get('phase')}); ids are unique per gateway"
        )
        self._answer(
            pump_id,
            rejected(cmd.id, error=error_body(ErrorCode.ID_CONFLICT, message)),
            reply,
            message,
        )
        return True

    def _hold(self, pump_id: str, command_id: str, progress: _Progress) -> None:
        """An accepted command takes its pump until it ends (others are answered busy)."""
        life = CommandLife(command_id, asyncio.get_running_loop().time() + COMMAND_DEADLINE_S)
        self._writing[pump_id] = life
        progress.life = life

    @staticmethod
    def _stored(
        pump_id: str,
        fp: str,
        answer: dict[str, Any],
        before: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The outcome kept for a command id: what a duplicate is told, plus the pump, the
        payload's fingerprint and (once accepted) the device's state before the write."""
        stored = {**outcome_of(answer), "pump": pump_id, "fingerprint": fp}
        if "readback" in answer:  # for a final result repeated after a restart
            stored["readback"] = answer["readback"]
        if before is not None:
            stored["before"] = before
        return stored

    async def _execute(self, job: _Execution, progress: _Progress) -> CommandClaim | None:
        """The verified write of an accepted command, then its events and its final outcome
        journaled in ONE transaction (still under the channel's lock, so a poll's events cannot
        take seqs in between) before the answer is published. Always ends the command, except
        for a command accepted outright whose id turns out known when it is claimed (nothing is
        sent): that claim is returned, to be answered as a repeat."""
        pump_id, cmd, plan, verdict = job.pump_id, job.cmd, job.plan, job.verdict
        channel = self.channels[pump_id]
        rate = verdict.rate if plan.action is Action.SET_RATE else None
        events: list[dict[str, Any]] = []
        async with channel.exclusive():
            saved = channel.save()
            old_rate = channel.status.rate_ml_h if channel.status is not None else None
            channel.driver.before_write = (
                self._sending_marker(job, progress)
                if job.admission is None
                else self._admitting_marker(job, progress)
            )
            try:
                result = await self._write(channel, plan.action, cmd.id, rate, events)
            finally:
                channel.driver.before_write = None
            if progress.drift is not None and result.outcome is Outcome.FAILED:
                result = WriteResult(Outcome.FAILED, result.readback, f"not sent: {progress.drift}")
            if job.admission is not None and not progress.accepted:
                claim = await self._claim_unsent(job, progress, saved)
                if claim is None or not claim.is_new:
                    return claim
            if result.outcome is Outcome.APPLIED and not _matches(plan.action, rate, result):
                # a driver that says so without proof: what it absorbed credits the command
                result = WriteResult(
                    Outcome.UNCERTAIN, None, "read-back does not match the command"
                )
            if result.outcome is Outcome.UNCERTAIN:
                if result.readback is None:  # nothing seen: the next poll decides
                    channel.restore(saved)
                    events.clear()
                # else the channel absorbed what the read-back showed (journaled below, judged
                # as a device change unless it is the commanded rate)
                channel.expect_uncertain(cmd.id, old_rate, rate, plan.program)
            if result.outcome is Outcome.APPLIED and plan.program is not None:
                channel.set_program(plan.program)
                events.append(program_changed(cmd.id, plan.program))
            answer = self._answer_for(channel, cmd.id, result)
            self._writing[pump_id].end(answer["phase"])  # an accepted command ends once, here
            log.info("command_result", pump=pump_id, id=cmd.id, phase=answer["phase"])
            try:
                await self.journal.settle_command(
                    cmd.id,
                    self._stored(pump_id, job.fingerprint, answer, job.before),
                    pump_id=pump_id,
                    # what the hub's emit_event would journal: the event with its pump id
                    events=[{**event, "pump_id": pump_id} for event in events],
                )
            except JournalError:
                # nothing of it is durable: show the last journaled truth again; the next poll
                # sees the change and attributes it to this command (reconciled)
                channel.restore(saved)
                if result.outcome is Outcome.APPLIED:
                    channel.expect_uncertain(cmd.id, old_rate, rate, plan.program)
                raise
            finally:
                self._writing.pop(pump_id, None)
        await self.send_result(pump_id, answer, job.reply)
        await channel.publish_state()
        return None

    def _admitting_marker(self, job: _Execution, progress: _Progress) -> BeforeWrite:
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
            if _refused_for_drift(job, progress, shown):
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

    async def _admit(self, job: _Execution, *, sending: bool) -> CommandClaim:
        """Claim + verdict + ``accepted`` (``sending``: the write goes out next) in one job."""
        admission = job.admission
        assert admission is not None
        stored = self._stored(job.pump_id, job.fingerprint, admission.answer, job.before)
        if sending:
            stored["sending"] = True
        return await self.journal.admit_command(
            job.cmd.id,
            pump_id=job.pump_id,
            command=admission.command,
            verdict=admission.answer["verdict"],
            outcome=stored,
            ts=admission.received,
        )

    async def _claim_unsent(
        self, job: _Execution, progress: _Progress, saved: Saved
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
            await self._refuse_unjournaled(job.pump_id, job.cmd, job.reply, exc)
        finally:
            if claim is None or not claim.is_new:
                channel.restore(saved)
        if claim is not None and claim.is_new:
            progress.accepted = True
            assert job.admission is not None
            await self.send_result(job.pump_id, job.admission.answer, job.reply)
        return claim

    async def _admitted(self, job: _Execution) -> CommandClaim:
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

    def _sending_marker(self, job: _Execution, progress: _Progress) -> BeforeWrite:
        """What the driver awaits after its pre-read, before the write goes out: the journal
        records (durably) that the write is being sent, so that a restart tells a command that
        never reached the device (``failed``, not sent) from one that may have. When the journal
        cannot take it, or the pump no longer runs what the command was checked against, the
        driver sends nothing and the command ends ``failed``."""

        async def mark(shown: PumpStatus) -> bool:
            if _refused_for_drift(job, progress, shown):
                return False
            answer = accepted(job.cmd.id, verdict=job.verdict.to_dict())
            stored = self._stored(job.pump_id, job.fingerprint, answer, job.before)
            try:
                await self.journal.set_command_outcome(
                    job.cmd.id, {**stored, "sending": True}, pump_id=job.pump_id
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
        events: list[dict[str, Any]],
    ) -> WriteResult:
        """The driver's write, bounded in time; whatever it raises becomes ``uncertain`` (the
        write may have reached the device) unless the driver said nothing was sent."""
        try:
            async with asyncio.timeout_at(self._writing[channel.pump_id].deadline):
                return await channel.execute(action, command_id, rate, events=events)
        except TimeoutError:
            detail = f"no verified answer within {COMMAND_DEADLINE_S:g} s"
        except DriverError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a driver bug must still end the command
            log.exception("driver_fault", pump=channel.pump_id, id=command_id)
            detail = f"driver fault: {type(exc).__name__}"
        return WriteResult(Outcome.UNCERTAIN, None, detail)

    def _answer_for(self, channel: Channel, command_id: str, result: WriteResult) -> dict[str, Any]:
        if result.outcome is Outcome.APPLIED:
            return applied(command_id, readback=self._readback(channel, result.readback))
        if result.outcome is Outcome.FAILED:
            code = "not_sent" if result.detail.startswith("not sent") else "device_rejected"
            return failed(
                command_id,
                error={"code": code, "message": result.detail or "device refused"},
                readback=self._readback(channel, result.readback) if result.readback else None,
            )
        return uncertain(
            command_id,
            error={"code": "device_timeout", "message": result.detail or "no answer"},
        )

    async def _confirmed(
        self,
        *,
        pump_id: str,
        cmd: Command,
        fp: str,
        plan: _Plan,
        verdict: Verdict,
        reply: ReplyTo | None,
    ) -> bool:
        """True when a valid confirmation overrides the confirm-level findings."""
        now = self.now()
        self._expire_tokens(now)
        verdict_json = verdict.to_dict()
        if cmd.confirm is None:
            token = secrets.token_urlsafe(18)
            expires = now + CONFIRM_TTL
            self._tokens[token] = _Pending(pump_id, plan.fingerprint, expires)
            await self._finish(
                pump_id,
                cmd,
                fp,
                needs_confirmation(
                    cmd.id, verdict=verdict_json, confirm_token=token, expires_at=expires
                ),
                reply,
            )
            return False
        pending = self._tokens.get(cmd.confirm.token)
        if pending is None or pending.pump_id != pump_id or pending.fingerprint != plan.fingerprint:
            why = (
                "confirm.token: unknown or expired"
                if pending is None
                else "confirm.token: was issued for a different command"
            )
            await self._finish(
                pump_id,
                cmd,
                fp,
                rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, why)),
                reply,
            )
            return False
        del self._tokens[cmd.confirm.token]
        override = {
            "type": "override_accepted",
            "command_id": cmd.id,
            "clinician": cmd.by.clinician,
            "reason": cmd.confirm.reason,
            "findings": [f for f in verdict_json["findings"] if f["severity"] == "confirm"],
        }
        await self.journal.append(JournalKind.OVERRIDE, override, pump_id=pump_id)
        await self._emit(pump_id, override)
        return True

    def _expire_tokens(self, now: datetime) -> None:
        for token in [t for t, p in self._tokens.items() if p.expires < now]:
            del self._tokens[token]

    async def _finish(
        self, pump_id: str, cmd: Command, fp: str, data: dict[str, Any], reply: ReplyTo | None
    ) -> None:
        log.info("command_result", pump=pump_id, id=cmd.id, phase=data["phase"])
        await self.journal.set_command_outcome(
            cmd.id, self._stored(pump_id, fp, data), pump_id=pump_id
        )
        await self.send_result(pump_id, data, reply)

    async def _emit(self, pump_id: str, event: dict[str, Any]) -> None:
        await self.channels[pump_id].hub.emit_event(pump_id, event)

    @staticmethod
    def _readback(
        channel: Channel, status: PumpStatus | None, program: Program | None = None
    ) -> dict[str, Any]:
        """The result's ``readback``; its dose under ``program`` (default: the channel's)."""
        if status is None:
            return {}
        running = program or channel.program
        dose = channel.dose_of(running, status.rate_ml_h)
        return {
            "status": status.state.value,
            "rate": {"value": float(status.rate_ml_h), "unit": "mL/h"},
            "dose": (
                None
                if dose is None
                else {"value": float(round(dose, 6)), "unit": running.dose_unit}
            ),
        }

    # -- after a restart ---------------------------------------------------------------------

    async def load_interrupted(self) -> None:
        """Read the commands a crash left at ``accepted`` (before any command is admitted):
        their pumps answer ``busy`` until :meth:`reconcile_interrupted` has settled them."""
        self._interrupted = [
            item
            for item in await self.journal.interrupted_commands()
            if item.pump_id is not None and item.pump_id in self.channels
        ]
        self.reconciling.update(item.pump_id for item in self._interrupted if item.pump_id)
        self._recent = await self.journal.settled_since(self.now() - RESULT_REPEAT_WINDOW)

    async def reconcile_interrupted(self) -> None:
        """Settle commands a crash left at ``accepted`` (sent or not, never verified) from what
        each device shows after its first poll, compared with what it showed before the write
        (journaled with ``accepted``): ``applied`` only when the device moved from its state
        before to the commanded one; ``failed`` (code ``interrupted``) when it is verified
        unchanged; ``uncertain`` when it cannot be read or shows something else. Nothing is
        sent to a device again; the result carries ``"reconciled": true`` and becomes what a
        duplicate of the id is told.

        First, the final results of the commands settled just before the restart are published
        again (``"repeated": true``): one may have been journaled and never published."""
        recent, self._recent = self._recent, []
        for item in recent:
            if item.pump_id in self.channels:
                answer = {"id": item.command_id, **outcome_of(item.outcome)}
                if "readback" in item.outcome:
                    answer["readback"] = item.outcome["readback"]
                answer["repeated"] = True
                await self.send_result(item.pump_id or "", answer, None)
        try:
            for item in self._interrupted:
                backoff = Backoff(initial_s=0.5, maximum_s=30.0)
                while True:
                    try:
                        await self._reconcile_one(item)
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

    async def _reconcile_one(self, item: InterruptedCommand) -> None:
        pump_id = item.pump_id or ""
        channel = self.channels[pump_id]
        await channel.first_poll_done.wait()
        answer = {**self._settle(channel, item), "reconciled": True}
        program = self._interrupted_program(channel, item)
        events = []
        if answer["phase"] == Phase.APPLIED and program is not None:
            events.append({**program_changed(item.command_id, program), "pump_id": pump_id})
            answer = {**answer, "readback": self._readback(channel, channel.status, program)}
        stored = self._stored(
            pump_id,
            str(
                item.outcome.get("fingerprint")
                or (fingerprint(item.command) if item.command else "")
            ),
            answer,
            item.outcome.get("before"),
        )
        # the outcome and the program it set: durable together, then kept
        await self.journal.settle_command(item.command_id, stored, pump_id=pump_id, events=events)
        if events and program is not None:
            channel.set_program(program)
        log.info("command_reconciled", pump=pump_id, id=item.command_id, phase=answer["phase"])
        self.reconciling.discard(pump_id)
        await self.send_result(pump_id, answer, None)

    def _interrupted_program(self, channel: Channel, item: InterruptedCommand) -> Program | None:
        """The program an interrupted ``program`` command would have set (None otherwise)."""
        command = item.command or {}
        if command.get("action") != "program":
            return None
        try:
            cmd = Command.model_validate(command)
        except ValueError:
            return None
        if cmd.program is None:
            return None
        return self._program_of(channel.program, cmd)

    def _settle(self, channel: Channel, item: InterruptedCommand) -> dict[str, Any]:
        status = channel.status
        cid = item.command_id
        if status is None or channel.connection is not ConnectionState.ONLINE:
            return uncertain(
                cid,
                error={
                    "code": "interrupted",
                    "message": "the gateway restarted during the write and the pump cannot be "
                    "read; check the pump",
                },
            )
        readback = self._readback(channel, status)
        before = item.outcome.get("before")
        action = str((item.command or {}).get("action"))
        found = ((item.outcome.get("verdict") or {}).get("rate") or {}).get("value")
        target = float(found) if isinstance(found, int | float) else None
        if not isinstance(before, dict):
            # written by a version that did not record the device's state before the write:
            # a device at the target may have been there already, so it never proves the write
            before = {}
        if before and not item.outcome.get("sending"):
            return failed(
                cid,
                error={
                    "code": "interrupted",
                    "message": "the gateway restarted before the write was sent: nothing "
                    "reached the pump",
                },
                readback=readback,
            )
        was_state, was_rate = before.get("status"), before.get("rate")
        state = status.state.value
        rate = float(status.rate_ml_h)
        # an alarm raised since (a power reset, an occlusion...) can change the device by itself:
        # then the change proves nothing about the write
        new_alarms = sorted({a.value for a in status.alarms} - set(before.get("alarms") or []))
        wanted_state = {"stop": "stopped", "pause": "paused", "start": "infusing"}.get(action)
        if wanted_state is not None:
            took = state == wanted_state and was_state is not None and was_state != wanted_state
            unchanged = state == was_state if was_state is not None else state != wanted_state
        else:
            at_target = target is not None and rate == target
            took = at_target and was_rate is not None and was_rate != target
            unchanged = rate == float(was_rate) if was_rate is not None else not at_target
        if took and not new_alarms:
            return applied(cid, readback=readback)
        if took:
            return uncertain(
                cid,
                error={
                    "code": "interrupted",
                    "message": "the gateway restarted during the write; the pump shows the "
                    f"commanded state but also raised {', '.join(new_alarms)}, which may have "
                    "caused it: check the pump",
                },
            )
        if unchanged:
            return failed(
                cid,
                error={
                    "code": "interrupted",
                    "message": "the gateway restarted before it could verify the write and the "
                    "pump shows no change made by it: not reported applied",
                },
                readback=readback,
            )
        return uncertain(
            cid,
            error={
                "code": "interrupted",
                "message": "the gateway restarted during the write and the pump now shows "
                "neither its state before nor the commanded one; check the pump",
            },
        )

    # -- building check requests -----------------------------------------------------------

    def _plan(self, channel: Channel, cmd: Command, now: datetime) -> _Plan:
        program = channel.program
        new_program: Program | None = None
        current = channel.current_dose()
        requested: dict[str, Any]
        action = Action.SET_RATE
        if cmd.action == "set_dose" and cmd.dose is not None:
            requested = {"dose": {"value": cmd.dose.value, "unit": cmd.dose.unit}}
        elif cmd.action == "set_rate" and cmd.rate is not None:
            requested = {"rate": {"value": cmd.rate.value, "unit": cmd.rate.unit}}
        elif cmd.action in ("stop", "pause"):
            requested = {"action": "stop"}
            action = Action.STOP if cmd.action == "stop" else Action.PAUSE
        elif cmd.action == "start":
            action = Action.START
            rate = channel.status.rate_ml_h if channel.status else Decimal(0)
            requested = {"rate": {"value": rate, "unit": "mL/h"}}
            current = None  # starting is a new infusion: START_RANGE applies
        elif cmd.action == "program" and cmd.program is not None:
            p = cmd.program
            if channel.status is not None and channel.status.state.value == "infusing":
                raise RequestError(
                    "program: the pump is infusing; stop it before programming a new infusion"
                )
            new_program = self._program_of(program, cmd)
            program = new_program
            current = None
            requested = {"dose": {"value": p.dose.value, "unit": p.dose.unit}}
        else:  # pragma: no cover - command_parse guarantees the fields of each action
            raise RequestError(f"action: {cmd.action} is missing its parameters")
        request = self.build_request(channel, program, now, current, requested)
        fingerprint = f"{cmd.action}|{requested}|{cmd.program.model_dump() if cmd.program else ''}"
        return _Plan(action, parse_request(request), fingerprint, new_program)

    def _program_of(self, running: Program, cmd: Command) -> Program:
        """The program a ``program`` command sets (the bed's context stays that of ``running``)."""
        p = cmd.program
        if p is None:  # pragma: no cover - command_parse guarantees it for action program
            raise RequestError("program: missing")
        return Program(
            drug=p.drug,
            concentration=Decimal(str(p.concentration.value)),
            concentration_unit=p.concentration.unit,
            dose_unit=self._dose_unit(p.profile, p.drug, p.dose.unit),
            diluent=p.diluent,
            route=p.route,
            profile=p.profile,
            weight_kg=Decimal(str(p.weight_kg)) if p.weight_kg is not None else None,
            line_shares=running.line_shares,
            bed=running.bed,
            baseline_sbp=running.baseline_sbp,
            chronic_hypertension=running.chronic_hypertension,
        )

    def _dose_unit(self, profile: str, drug: str, fallback: str) -> str:
        entry = self.library.drug(profile, drug)
        return entry.dose_unit if entry is not None else fallback

    def _history_entry(
        self, at: datetime, dose: Decimal, unit: str
    ) -> HistoryEntry | dict[str, Any]:
        """One past dose of the check request, validated once and then reused: a pump's
        history (up to 64 changes) goes into every check of it, and validating it anew cost
        ~0.7 ms per command (docs/performance.md). Unchanged semantics: the same model the
        request's parser builds; one it refuses stays a dict, for the parser to name."""
        key = (at, str(dose), unit)
        entry = self._history_models.get(key)
        if entry is None:
            item = {"at": at_ms(at), "dose": {"value": dose, "unit": unit}}
            try:
                entry = HistoryEntry.model_validate(item)
            except ValidationError:
                return item
            if len(self._history_models) >= HISTORY_MODELS_MAX:
                self._history_models.clear()
            self._history_models[key] = entry
        return entry

    def build_request(
        self,
        channel: Channel,
        program: Program,
        now: datetime,
        current: Decimal | None,
        requested: dict[str, Any],
    ) -> dict[str, Any]:
        """The check request (docs/check.md) for ``channel``, for commands and observations."""
        caps = channel.driver.capabilities
        patient: dict[str, Any] = {"chronic_hypertension": program.chronic_hypertension}
        if program.weight_kg is not None:
            patient["weight_kg"] = program.weight_kg
        if program.baseline_sbp is not None:
            patient["baseline_sbp"] = program.baseline_sbp
        others = []
        for other in self.channels.values():
            if other is channel or other.program.bed != program.bed or program.bed is None:
                continue
            dose = other.current_dose()
            if dose is not None:
                others.append(
                    {
                        "drug": other.program.drug,
                        "dose": {"value": dose, "unit": other.program.dose_unit},
                    }
                )
        return {
            # datetimes, not text: the same instants as format_ts spells, ~7 us less each
            "now": at_ms(now),
            "profile": program.profile,
            "patient": patient,
            "infusion": {
                "drug": program.drug,
                "concentration": {
                    "value": program.concentration,
                    "unit": program.concentration_unit,
                },
                "diluent": program.diluent,
                "route": program.route,
                "line_shares": list(program.line_shares),
            },
            "current": (None if current is None else {"value": current, "unit": program.dose_unit}),
            "requested": requested,
            "history": [
                self._history_entry(h.at, h.dose, program.dose_unit) for h in channel.history
            ],
            "vitals": self.vitals_for(program.bed),
            "other_infusions": others,
            "pump": {
                "min_rate": caps.min_rate_ml_h,
                "max_rate": caps.max_rate_ml_h,
                "resolution": caps.resolution_ml_h,
            },
        }

    def observe(self, channel: Channel, old: Decimal, new: Decimal) -> dict[str, Any] | None:
        """Judge a rate seen at the device by the rules of a command (``current`` = the rate
        before it). Returns the verdict, its findings cut to those of severity confirm or
        reject, when there is any; None when the library would accept the change outright."""
        current = channel.dose_of(channel.program, old)
        request = self.build_request(
            channel,
            channel.program,
            self.now(),
            current,
            {"rate": {"value": new, "unit": "mL/h"}},
        )
        verdict = evaluate(self.library, parse_request(request))
        data = verdict.to_dict()
        serious = [f for f in data["findings"] if f["severity"] in ("confirm", "reject")]
        if not serious:
            return None
        return {**data, "findings": serious}


@dataclass(frozen=True, slots=True)
class _Plan:
    action: Action
    request: Any
    fingerprint: str
    program: Program | None


@dataclass(slots=True)
class _Progress:
    """How far one command got: the pump it holds (answered busy meanwhile), and whether its
    ``accepted`` is durable (from then on a fault answers ``uncertain``, never ``rejected``)."""

    life: CommandLife | None = None
    accepted: bool = False
    drift: str | None = None  # why the write hook refused: the pump changed since the check


@dataclass(slots=True)
class _Admission:
    """A command accepted outright, not journaled yet: what its claim will record, and the
    task of that claim once the driver's hook started it."""

    answer: dict[str, Any]  # the ``accepted`` result
    command: dict[str, Any]  # the command as received
    received: datetime
    task: asyncio.Task[CommandClaim] | None = None


@dataclass(frozen=True, slots=True)
class _Execution:
    """A command ready for its write (once the pump's check lock is released): accepted step
    by step (journaled), or accepted outright (``admission``: claimed by the write's hook)."""

    pump_id: str
    cmd: Command
    fingerprint: str
    plan: _Plan
    verdict: Verdict
    reply: ReplyTo | None
    before: dict[str, Any] | None
    admission: _Admission | None = None


def _refused_for_drift(job: _Execution, progress: _Progress, shown: PumpStatus) -> bool:
    """True (and ``progress.drift`` says why) when the write's pre-read shows the pump running
    something else than what the command was checked against: a front-panel change since the
    last poll. The check judged the change from the old state (step-up window, taper, the
    current dose), so the write must not go out; the command ends ``failed`` (not sent) and is
    checked again when it is sent again. A stop or pause always goes out: nothing may keep an
    infusion running against a clinician's stop, whatever the pump runs now."""
    before = job.before
    if before is None or job.plan.action in {Action.STOP, Action.PAUSE}:
        return False
    if before["status"] == shown.state.value and before["rate"] == float(shown.rate_ml_h):
        return False
    progress.drift = (
        f"the pump changed since the command was checked (it was {before['status']} at "
        f"{before['rate']:g} mL/h; now {shown.state.value} at {float(shown.rate_ml_h):g} mL/h); "
        "nothing was sent: check the command again against what the pump runs now"
    )
    log.warning("write_refused_pump_changed", pump=job.pump_id, id=job.cmd.id, why=progress.drift)
    return True


def _device_before(channel: Channel) -> dict[str, Any] | None:
    """What the device showed before a write (journaled with ``accepted``): a restart settles
    the command by comparing the device with it, never by the target alone."""
    status = channel.status
    if status is None:
        return None
    return {
        "status": status.state.value,
        "rate": float(status.rate_ml_h),
        "alarms": sorted(a.value for a in status.alarms),
    }


def _matches(action: Action, rate: Decimal | None, result: WriteResult) -> bool:
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
