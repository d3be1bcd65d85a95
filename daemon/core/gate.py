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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import structlog

from daemon.base.events import CommandRejected, OverrideAccepted, PumpEvent
from daemon.base.payload import JsonObject
from daemon.base.results import (
    PENDING,
    CommandResult,
    CommandSource,
    ErrorBody,
    ErrorCode,
    KeptOutcome,
    Phase,
    VerdictJson,
)
from daemon.base.topics import capped_id
from daemon.core.channel import Channel
from daemon.core.command_life import CommandLife, fingerprint, id_conflict
from daemon.core.gate_admission import Control, Doorway
from daemon.core.gate_confirm import Confirmations
from daemon.core.gate_request import CheckRequests, Plan, VitalsLookup
from daemon.core.gate_restart import Reconciler
from daemon.core.gate_write import (
    Admission,
    Execution,
    Progress,
    Writer,
    device_before,
    refuse_unjournaled,
)
from daemon.core.program import Action
from daemon.core.replies import ReplyTo, ResultSink, bad_request, fault_answer, told_repeat
from daemon.journal.records import CommandClaim, JournalError, JournalKind
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.command_parse import Command, Rejection, parse_command
from daemon.mqtt.refusals import RefusalDesk
from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.library import Library
from protocol.verdict import Verdict

__all__ = ["Control", "Gate", "ReplyTo"]

log = structlog.get_logger("infusiond.gate")


@dataclass
class Gate:
    """Admits, checks and executes commands; one in flight per pump. The pipeline is here; its
    steps are done by collaborators: admission (gate_admission), check requests (gate_request),
    confirmation tokens (gate_confirm), the verified write (gate_write), settling after a
    restart (gate_restart)."""

    library: Library
    channels: dict[str, Channel]
    journal: AsyncJournal
    send_result: ResultSink
    now: Callable[[], datetime]
    vitals_for: VitalsLookup = lambda _bed: None
    control: Control = field(default_factory=Control)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _answers: set[asyncio.Task[None]] = field(default_factory=set)
    #: made on the first refusal (daemon/mqtt/refusals.py)
    _refusals: RefusalDesk[ReplyTo | None] | None = None
    _confirmations: Confirmations = field(default_factory=Confirmations)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _waiting: dict[str, int] = field(default_factory=dict)
    #: pump -> the command being written there (accepted, not yet settled)
    _writing: dict[str, CommandLife] = field(default_factory=dict)
    #: pumps whose command interrupted by a restart is not settled yet (answered busy)
    reconciling: set[str] = field(default_factory=set)
    _requests: CheckRequests = field(init=False)
    _writer: Writer = field(init=False)
    _restart: Reconciler = field(init=False)
    _doorway: Doorway = field(init=False)

    def __post_init__(self) -> None:
        self._doorway = Doorway(self.channels, self._writing, self._waiting, self.reconciling)
        self._requests = CheckRequests(self.channels, self.vitals_for)
        self._writer = Writer(self.channels, self.journal, self.send_result, self._writing)
        self._restart = Reconciler(
            self.channels, self.journal, self.send_result, self.now, self.reconciling
        )

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
            answer = CommandResult.rejected(parsed.id, error=parsed.error())
            self._answer(pump_id, answer, reply, parsed.message)
            return
        error = self._doorway.error(pump_id, parsed, self.control)
        if error is not None:
            self._answer(
                pump_id, CommandResult.rejected(parsed.id, error=error), reply, error.message
            )
            return
        self._waiting[pump_id] = self._waiting.get(pump_id, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._run_guarded(pump_id, parsed, reply), name=f"command:{pump_id}:{parsed.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit_order(
        self, pump_id: str, command: JsonObject, *, order_id: str
    ) -> CommandResult:
        """A hospital order (IHE PCD PIV) as ``command``: the same parsing, admission and
        verdict as an MQTT command, but it never reaches the pump. A verdict other than reject
        becomes ``needs_confirmation`` (with a token, whatever the verdict) carrying
        ``"source": "piv"``, the order id and the command to confirm; a reject is ``rejected``
        with its findings. The answer is journaled, published and returned (for RRG^O16).
        ``command`` is JSON on purpose: it goes through the very parser MQTT payloads do."""
        now = self.now()
        parsed = parse_command(json.dumps(command).encode(), now=now)
        if isinstance(parsed, Rejection):
            answer = CommandResult.rejected(parsed.id, error=parsed.error()).for_order(order_id)
            self._answer(pump_id, answer, None, parsed.message)
            return answer
        error = self._doorway.error(pump_id, parsed, self.control)
        if error is not None:
            answer = CommandResult.rejected(parsed.id, error=error).for_order(order_id)
            self._answer(pump_id, answer, None, error.message)
            return answer
        command_json = parsed.to_json()
        fp = fingerprint(command_json)
        claim = await self.journal.claim_command(
            parsed.id, pump_id=pump_id, command=command_json, ts=now
        )
        if not claim.is_new:
            answer = told_repeat(parsed.id, pump_id, claim).for_order(order_id)
            await self.send_result(pump_id, answer, None)
            return answer
        try:
            plan = self._requests.plan(self.library, self.channels[pump_id], parsed, now)
        except RequestError as exc:
            error = ErrorBody(ErrorCode.BAD_REQUEST, str(exc))
            answer = CommandResult.rejected(parsed.id, error=error).for_order(order_id)
            await self._finish(pump_id, parsed, fp, answer, None)
            return answer
        verdict = evaluate(self.library, plan.request)
        verdict_json = VerdictJson(verdict.to_dict())
        await self.journal.append(
            JournalKind.VERDICT,
            {
                "id": parsed.id,
                "verdict": verdict_json.to_json(),
                "source": CommandSource.PIV.value,
                "order_id": order_id,
            },
            pump_id=pump_id,
        )
        if verdict.verdict == "reject":
            answer = CommandResult.rejected(parsed.id, verdict=verdict_json).for_order(order_id)
        else:
            token, expires = self._confirmations.issue(pump_id, plan.fingerprint, now)
            answer = CommandResult.needs_confirmation(
                parsed.id, verdict=verdict_json, confirm_token=token, expires_at=expires
            ).for_order(order_id, command)
        await self._finish(pump_id, parsed, fp, answer, None)
        return answer

    def _answer(self, pump_id: str, data: CommandResult, reply: ReplyTo | None, why: str) -> None:
        # Refusals go through one rate-limited desk (daemon/mqtt/refusals.py), never a task each.
        if self._refusals is None:
            self._refusals = RefusalDesk(
                journal=self.journal, refuse_one=self._refuse, answer=self.send_result
            )
        worker = self._refusals.refuse(pump_id, data, reply, why)
        if worker is not None:
            self._answers.add(worker)
            worker.add_done_callback(self._answers.discard)

    async def _refuse(self, pump_id: str, data: CommandResult, reply: ReplyTo | None) -> None:
        shown = capped_id(pump_id)  # a topic can carry a 65,000-character pump id
        try:
            await self.journal.append(
                JournalKind.COMMAND, {"pump": shown, "answer": data.to_json()}, pump_id=shown
            )
        except JournalError as exc:  # the refusal still goes out: nothing was executed
            log.critical("journal_unavailable", pump=shown, id=data.id, error=str(exc))
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
        progress = Progress()
        lock = self._locks.setdefault(pump_id, asyncio.Lock())
        waiting = True
        try:
            async with lock:
                self._waiting[pump_id] -= 1
                waiting = False
                busy = self._doorway.busy(pump_id)
                if busy is not None:
                    answer = CommandResult.rejected(cmd.id, error=busy)
                    self._answer(pump_id, answer, reply, busy.message)
                    return
                job = await self._run(pump_id, cmd, reply, progress)
            if job is not None and (known := await self._writer.execute(job, progress)) is not None:
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
                    await self._writer.execute(job, progress)
        except JournalError as exc:
            log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
            body = ErrorBody(ErrorCode.JOURNAL_UNAVAILABLE, f"journal write failed: {exc}")
            await self.send_result(
                pump_id, fault_answer(cmd.id, body, accepted=progress.accepted), reply
            )
        except Exception as exc:
            log.exception("command_crashed", pump=pump_id, id=cmd.id)
            body = ErrorBody(ErrorCode.INTERNAL_ERROR, f"gateway fault: {type(exc).__name__}")
            await self.send_result(
                pump_id, fault_answer(cmd.id, body, accepted=progress.accepted), reply
            )
        finally:
            if waiting:
                self._waiting[pump_id] -= 1
            # release the pump only if this command holds it (a repeated id does not)
            if progress.life is not None and self._writing.get(pump_id) is progress.life:
                del self._writing[pump_id]

    async def _run(
        self, pump_id: str, cmd: Command, reply: ReplyTo | None, progress: Progress
    ) -> Execution | None:
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
        plan: Plan | RequestError
        try:
            plan = self._requests.plan(self.library, channel, cmd, now)
        except RequestError as exc:
            plan = exc
        verdict: Verdict | None = None
        outright: tuple[Plan, Verdict] | None = None
        if isinstance(plan, Plan):
            verdict = evaluate(self.library, plan.request)
            if verdict.verdict == "accept" and (
                plan.action is not Action.SET_RATE or verdict.rate is not None
            ):
                outright = (plan, verdict)
        before = device_before(channel)
        if outright:
            # the pump is this command's from now on (others are answered busy); nothing is
            # journaled yet: the write's hook claims it (see _execute)
            self._writer.hold(pump_id, cmd.id, progress)
            answer = CommandResult.accepted(cmd.id, verdict=VerdictJson(outright[1].to_dict()))
            admission = Admission(answer, command_json, now)
            return Execution(pump_id, cmd, fp, *outright, reply, before, admission)
        try:
            claim = await self.journal.claim_command(
                cmd.id, pump_id=pump_id, command=command_json, ts=now
            )
        except JournalError as exc:  # no journal, no command: refuse, never execute
            await refuse_unjournaled(self.send_result, pump_id, cmd, reply, exc)
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

    async def _repeat(
        self,
        pump_id: str,
        cmd: Command,
        *,
        fp: str,
        claim: CommandClaim,
        plan: Plan | RequestError,
        verdict: Verdict | None,
        reply: ReplyTo | None,
        progress: Progress,
    ) -> Execution | None:
        """A known id (its duplicate row is journaled): ``id_conflict``, ``duplicate``, or the
        confirmation of a command that asked for one, resumed step by step."""
        first = claim.first or PENDING
        conflict = id_conflict(pump_id, cmd.id, fp, first)
        if conflict is not None:
            error = ErrorBody(ErrorCode.ID_CONFLICT, conflict)
            self._answer(pump_id, CommandResult.rejected(cmd.id, error=error), reply, conflict)
            return None
        resumable = first.phase is Phase.NEEDS_CONFIRMATION and cmd.confirm
        if not resumable:
            await self.send_result(pump_id, told_repeat(cmd.id, pump_id, claim), reply)
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
        plan: Plan | RequestError,
        verdict: Verdict | None,
        reply: ReplyTo | None,
        progress: Progress,
    ) -> Execution | None:
        """Every command not accepted outright: its verdict, then reject, confirmation asked,
        override, or accepted (each step journaled before it is answered)."""
        before = device_before(self.channels[pump_id])
        if isinstance(plan, RequestError):
            await self._finish(pump_id, cmd, fp, bad_request(cmd.id, str(plan)), reply)
            return None
        verdict = verdict or evaluate(self.library, plan.request)
        verdict_json = verdict.to_dict()
        await self.journal.append(
            JournalKind.VERDICT, {"id": cmd.id, "verdict": verdict_json}, pump_id=pump_id
        )
        if verdict.verdict == "reject":
            answer = CommandResult.rejected(cmd.id, verdict=VerdictJson(verdict_json))
            await self._finish(pump_id, cmd, fp, answer, reply)
            await self._emit(pump_id, CommandRejected(cmd.id, verdict_json))
            return None
        if verdict.verdict == "confirm" and not await self._confirmed(
            pump_id=pump_id, cmd=cmd, fp=fp, plan=plan, verdict=verdict, reply=reply
        ):
            return None
        if plan.action is Action.SET_RATE and verdict.rate is None:
            await self._finish(pump_id, cmd, fp, bad_request(cmd.id, "no rate computed"), reply)
            return None
        answer = CommandResult.accepted(cmd.id, verdict=VerdictJson(verdict_json))
        await self.journal.set_command_outcome(
            cmd.id, KeptOutcome.of(pump_id, fp, answer, before), pump_id=pump_id
        )
        self._writer.hold(pump_id, cmd.id, progress)
        progress.accepted = True
        await self.send_result(pump_id, answer, reply)
        return Execution(pump_id, cmd, fp, plan, verdict, reply, before)

    async def _confirmed(
        self,
        *,
        pump_id: str,
        cmd: Command,
        fp: str,
        plan: Plan,
        verdict: Verdict,
        reply: ReplyTo | None,
    ) -> bool:
        """True when a valid confirmation overrides the confirm-level findings."""
        now = self.now()
        verdict_json = verdict.to_dict()
        if cmd.confirm is None:
            token, expires = self._confirmations.issue(pump_id, plan.fingerprint, now)
            answer = CommandResult.needs_confirmation(
                cmd.id, verdict=VerdictJson(verdict_json), confirm_token=token, expires_at=expires
            )
            await self._finish(pump_id, cmd, fp, answer, reply)
            return False
        why = self._confirmations.redeem(cmd.confirm.token, pump_id, plan.fingerprint, now)
        if why is not None:
            await self._finish(pump_id, cmd, fp, bad_request(cmd.id, why), reply)
            return False
        override = OverrideAccepted(
            cmd.id,
            cmd.by.clinician,
            cmd.confirm.reason,
            tuple(f for f in verdict_json["findings"] if f["severity"] == "confirm"),
        )
        await self.journal.append(JournalKind.OVERRIDE, override.to_json(), pump_id=pump_id)
        await self._emit(pump_id, override)
        return True

    async def _finish(
        self, pump_id: str, cmd: Command, fp: str, data: CommandResult, reply: ReplyTo | None
    ) -> None:
        log.info("command_result", pump=pump_id, id=cmd.id, phase=data.phase.value)
        await self.journal.set_command_outcome(
            cmd.id, KeptOutcome.of(pump_id, fp, data), pump_id=pump_id
        )
        await self.send_result(pump_id, data, reply)

    async def _emit(self, pump_id: str, event: PumpEvent) -> None:
        await self.channels[pump_id].hub.emit_event(pump_id, event)

    def observe(self, channel: Channel, old: Decimal, new: Decimal) -> JsonObject | None:
        """Judge a rate seen at the device by the rules of a command (see
        :meth:`CheckRequests.observe`)."""
        return self._requests.observe(self.library, channel, old, new, self.now())

    # -- after a restart ---------------------------------------------------------------------

    async def load_interrupted(self) -> None:
        """Read the commands a crash left at ``accepted`` (see :class:`Reconciler`)."""
        await self._restart.load_interrupted()

    async def reconcile_interrupted(self) -> None:
        """Settle them once each pump has been polled (see :class:`Reconciler`)."""
        await self._restart.reconcile_interrupted(self.library)
