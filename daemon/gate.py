"""The command gate: every rate change passes the drug library before it reaches a pump.

Pipeline for one MQTT command (DESIGN.md section 6): parse (size, JSON, schema, expiry,
retained) -> known pump -> remote control enabled -> clinician allowed -> not busy -> id not
seen before (journal) -> check request built from the channel's context -> verdict:

- ``reject``: answered ``rejected`` with the verdict; nothing reaches the driver.
- ``confirm`` without a valid confirmation: ``needs_confirmation`` with a token valid 120 s;
  the same command re-sent (same id, or a new id) with ``confirm: {token, reason}`` executes
  and the override is journaled and announced (``override_accepted``).
- ``accept``: ``accepted``, then the verified write -> ``applied`` / ``failed`` / ``uncertain``.

Admission errors (unknown pump, control disabled, not authorized, busy) are journaled but do
not claim the command id: nothing was executed, so the sender may retry with the same id.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from daemon.channel import Action, Channel, Program
from daemon.command_parse import (
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
from daemon.journal import AsyncJournal, InterruptedCommand, JournalError, JournalKind
from daemon.refusals import RefusalDesk
from daemon.signing import SignaturePolicy
from daemon.timefmt import format_ts
from daemon.topics import capped_id
from drivers.base import ConnectionState, Outcome, PumpStatus
from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.library import Library
from protocol.request import parse_request
from protocol.verdict import Verdict

log = structlog.get_logger("infusiond.gate")

CONFIRM_TTL = timedelta(seconds=120)

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
    _inflight: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _answers: set[asyncio.Task[None]] = field(default_factory=set)
    _refusals: RefusalDesk | None = None  # made on the first refusal (daemon/refusals.py)
    _tokens: dict[str, _Pending] = field(default_factory=dict)

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
        task = asyncio.get_running_loop().create_task(
            self._run_guarded(pump_id, parsed, reply), name=f"command:{pump_id}:{parsed.id}"
        )
        self._inflight[pump_id] = task
        task.add_done_callback(lambda _t: self._inflight.pop(pump_id, None))

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
        if pump_id in self._inflight:
            return error_body(
                ErrorCode.BUSY, f"pump {pump_id} is executing another command; retry later"
            )
        return None

    def _answer(self, pump_id: str, data: dict[str, Any], reply: ReplyTo | None, why: str) -> None:
        # Refusals go through one rate-limited desk (daemon/refusals.py), never a task each.
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
        pending = [*self._inflight.values(), *self._answers]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- the checked path ---------------------------------------------------------------------

    async def _run_guarded(self, pump_id: str, cmd: Command, reply: ReplyTo | None) -> None:
        """:meth:`_run`, and an answer even when the journal fails half way: before the write
        ``rejected`` (nothing was executed), after it ``uncertain`` (the poll reconciles)."""
        accepted_sent: set[str] = set()
        try:
            await self._run(pump_id, cmd, reply, accepted_sent)
        except JournalError as exc:
            log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
            body = error_body(ErrorCode.JOURNAL_UNAVAILABLE, f"journal write failed: {exc}")
            answer = (
                uncertain(cmd.id, error=body) if accepted_sent else rejected(cmd.id, error=body)
            )
            await self.send_result(pump_id, answer, reply)

    async def _run(
        self, pump_id: str, cmd: Command, reply: ReplyTo | None, accepted_sent: set[str]
    ) -> None:
        channel = self.channels[pump_id]
        now = self.now()
        # The check is pure and fast: decide before claiming, so that a command the library
        # accepts outright is claimed, its verdict and its ``accepted`` journaled in ONE durable
        # transaction (docs/performance.md). Anything else takes the step-by-step path below.
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
        answer = accepted(cmd.id, verdict=outright[1].to_dict()) if outright else {}
        try:
            if outright:
                claim = await self.journal.admit_command(
                    cmd.id,
                    pump_id=pump_id,
                    command=cmd.to_json(),
                    verdict=answer["verdict"],
                    outcome=outcome_of(answer),
                    ts=now,
                )
            else:
                claim = await self.journal.claim_command(
                    cmd.id, pump_id=pump_id, command=cmd.to_json(), ts=now
                )
        except JournalError as exc:  # no journal, no command: refuse, never execute
            log.critical("journal_unavailable", pump=pump_id, id=cmd.id, error=str(exc))
            error = error_body(
                ErrorCode.JOURNAL_UNAVAILABLE,
                "the gateway cannot write its journal (disk full or read-only?); "
                "commands are refused until it can",
            )
            await self.send_result(pump_id, rejected(cmd.id, error=error), reply)
            return
        if claim.is_new and outright:
            # claim, verdict and accepted are durable together: the write may go ahead
            await self.send_result(pump_id, answer, reply)
            accepted_sent.add(cmd.id)
            await self._execute(pump_id, cmd, *outright, reply)
            return
        if not claim.is_new:
            first = claim.first or {}
            resumable = first.get("phase") == Phase.NEEDS_CONFIRMATION and cmd.confirm
            if not resumable:
                await self.send_result(pump_id, duplicate(cmd.id, first=first), reply)
                return
        if isinstance(plan, RequestError):
            await self._finish(
                pump_id,
                cmd,
                rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, str(plan))),
                reply,
            )
            return
        verdict = verdict or evaluate(self.library, plan.request)
        verdict_json = verdict.to_dict()
        await self.journal.append(
            JournalKind.VERDICT, {"id": cmd.id, "verdict": verdict_json}, pump_id=pump_id
        )
        if verdict.verdict == "reject":
            await self._finish(pump_id, cmd, rejected(cmd.id, verdict=verdict_json), reply)
            await self._emit(
                pump_id, {"type": "command_rejected", "command_id": cmd.id, "verdict": verdict_json}
            )
            return
        if verdict.verdict == "confirm" and not await self._confirmed(
            pump_id, cmd, plan, verdict, reply
        ):
            return
        if plan.action is Action.SET_RATE and verdict.rate is None:
            await self._finish(
                pump_id,
                cmd,
                rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, "no rate computed")),
                reply,
            )
            return
        await self._progress(pump_id, cmd, accepted(cmd.id, verdict=verdict_json), reply)
        accepted_sent.add(cmd.id)
        await self._execute(pump_id, cmd, plan, verdict, reply)

    async def _execute(
        self, pump_id: str, cmd: Command, plan: _Plan, verdict: Verdict, reply: ReplyTo | None
    ) -> None:
        """The verified write of an accepted command, then its events and its final outcome
        journaled in ONE transaction (still under the channel's lock, so a poll's events cannot
        take seqs in between) before the answer is published."""
        channel = self.channels[pump_id]
        rate = verdict.rate if plan.action is Action.SET_RATE else None
        events: list[dict[str, Any]] = []
        async with channel.exclusive():
            result = await channel.execute(plan.action, cmd.id, rate, events=events)
            if result.outcome is Outcome.APPLIED and plan.program is not None:
                channel.set_program(plan.program)
                events.append(program_changed(cmd.id, plan.program))
            if result.outcome is Outcome.APPLIED:
                answer = applied(cmd.id, readback=self._readback(channel, result.readback))
            elif result.outcome is Outcome.FAILED:
                answer = failed(
                    cmd.id,
                    error={"code": "device_rejected", "message": result.detail or "device refused"},
                    readback=self._readback(channel, result.readback) if result.readback else None,
                )
            else:
                answer = uncertain(
                    cmd.id,
                    error={"code": "device_timeout", "message": result.detail or "no answer"},
                )
            log.info("command_result", pump=pump_id, id=cmd.id, phase=answer["phase"])
            await self.journal.settle_command(
                cmd.id,
                outcome_of(answer),
                pump_id=pump_id,
                # what the hub's emit_event would journal: the event with its pump id
                events=[{**event, "pump_id": pump_id} for event in events],
            )
        await self.send_result(pump_id, answer, reply)
        await channel.publish_state()

    async def _confirmed(
        self, pump_id: str, cmd: Command, plan: _Plan, verdict: Verdict, reply: ReplyTo | None
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
                pump_id, cmd, rejected(cmd.id, error=error_body(ErrorCode.BAD_REQUEST, why)), reply
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

    async def _progress(
        self, pump_id: str, cmd: Command, data: dict[str, Any], reply: ReplyTo | None
    ) -> None:
        await self.journal.set_command_outcome(cmd.id, outcome_of(data), pump_id=pump_id)
        await self.send_result(pump_id, data, reply)

    async def _finish(
        self, pump_id: str, cmd: Command, data: dict[str, Any], reply: ReplyTo | None
    ) -> None:
        log.info("command_result", pump=pump_id, id=cmd.id, phase=data["phase"])
        await self._progress(pump_id, cmd, data, reply)

    async def _emit(self, pump_id: str, event: dict[str, Any]) -> None:
        await self.channels[pump_id].hub.emit_event(pump_id, event)

    @staticmethod
    def _readback(channel: Channel, status: PumpStatus | None) -> dict[str, Any]:
        if status is None:
            return {}
        return {
            "status": status.state.value,
            "rate": {"value": float(status.rate_ml_h), "unit": "mL/h"},
            "dose": channel.dose_obj(status.rate_ml_h),
        }

    # -- after a restart ---------------------------------------------------------------------

    async def reconcile_interrupted(self) -> None:
        """Settle commands a crash left at ``accepted`` (sent, never verified) from what each
        device shows after its first poll: ``applied`` or ``failed`` (code ``interrupted``),
        ``uncertain`` if the pump cannot be read. Nothing is sent to a device again; the result
        carries ``"reconciled": true`` and becomes what a duplicate of the id is told."""
        for item in await self.journal.interrupted_commands():
            channel = self.channels.get(item.pump_id or "")
            if channel is None or item.pump_id is None:
                continue
            await channel.first_poll_done.wait()
            answer = {**self._settle(channel, item), "reconciled": True}
            log.info(
                "command_reconciled", pump=item.pump_id, id=item.command_id, phase=answer["phase"]
            )
            await self.journal.set_command_outcome(
                item.command_id, outcome_of(answer), pump_id=item.pump_id
            )
            await self.send_result(item.pump_id, answer, None)

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
        action = (item.command or {}).get("action")
        state = status.state.value
        target = ((item.outcome.get("verdict") or {}).get("rate") or {}).get("value")
        took = {
            "stop": state in ("stopped", "alarm"),
            "pause": state == "paused",
            "start": state == "infusing",
        }.get(str(action), target is not None and float(status.rate_ml_h) == float(target))
        readback = self._readback(channel, status)
        if took:
            return applied(cid, readback=readback)
        return failed(
            cid,
            error={
                "code": "interrupted",
                "message": "the gateway restarted during the write; the device did not take it",
            },
            readback=readback,
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
            requested = {"rate": {"value": str(rate), "unit": "mL/h"}}
            current = None  # starting is a new infusion: START_RANGE applies
        elif cmd.action == "program" and cmd.program is not None:
            p = cmd.program
            if channel.status is not None and channel.status.state.value == "infusing":
                raise RequestError(
                    "program: the pump is infusing; stop it before programming a new infusion"
                )
            new_program = Program(
                drug=p.drug,
                concentration=Decimal(str(p.concentration.value)),
                concentration_unit=p.concentration.unit,
                dose_unit=self._dose_unit(p.profile, p.drug, p.dose.unit),
                diluent=p.diluent,
                route=p.route,
                profile=p.profile,
                weight_kg=Decimal(str(p.weight_kg)) if p.weight_kg is not None else None,
                line_shares=program.line_shares,
                bed=program.bed,
                baseline_sbp=program.baseline_sbp,
                chronic_hypertension=program.chronic_hypertension,
            )
            program = new_program
            current = None
            requested = {"dose": {"value": p.dose.value, "unit": p.dose.unit}}
        else:  # pragma: no cover - command_parse guarantees the fields of each action
            raise RequestError(f"action: {cmd.action} is missing its parameters")
        request = self.build_request(channel, program, now, current, requested)
        fingerprint = f"{cmd.action}|{requested}|{cmd.program.model_dump() if cmd.program else ''}"
        return _Plan(action, parse_request(request), fingerprint, new_program)

    def _dose_unit(self, profile: str, drug: str, fallback: str) -> str:
        entry = self.library.drug(profile, drug)
        return entry.dose_unit if entry is not None else fallback

    def build_request(
        self,
        channel: Channel,
        program: Program,
        now: datetime,
        current: Decimal | None,
        requested: dict[str, Any],
    ) -> dict[str, Any]:
        """The DESIGN 3.4 check request for ``channel`` (used for commands and observations)."""
        caps = channel.driver.capabilities
        patient: dict[str, Any] = {"chronic_hypertension": program.chronic_hypertension}
        if program.weight_kg is not None:
            patient["weight_kg"] = str(program.weight_kg)
        if program.baseline_sbp is not None:
            patient["baseline_sbp"] = str(program.baseline_sbp)
        others = []
        for other in self.channels.values():
            if other is channel or other.program.bed != program.bed or program.bed is None:
                continue
            dose = other.current_dose()
            if dose is not None:
                others.append(
                    {
                        "drug": other.program.drug,
                        "dose": {"value": str(dose), "unit": other.program.dose_unit},
                    }
                )
        return {
            "now": format_ts(now),
            "profile": program.profile,
            "patient": patient,
            "infusion": {
                "drug": program.drug,
                "concentration": {
                    "value": str(program.concentration),
                    "unit": program.concentration_unit,
                },
                "diluent": program.diluent,
                "route": program.route,
                "line_shares": list(program.line_shares),
            },
            "current": (
                None if current is None else {"value": str(current), "unit": program.dose_unit}
            ),
            "requested": requested,
            "history": [
                {"at": format_ts(h.at), "dose": {"value": str(h.dose), "unit": program.dose_unit}}
                for h in channel.history
            ],
            "vitals": self.vitals_for(program.bed),
            "other_infusions": others,
            "pump": {
                "min_rate": str(caps.min_rate_ml_h),
                "max_rate": str(caps.max_rate_ml_h),
                "resolution": str(caps.resolution_ml_h),
            },
        }

    async def observe(self, channel: Channel, old: Decimal, new: Decimal) -> dict[str, Any] | None:
        """Check a rate seen at the device; returns the verdict when the library rejects it."""
        current = channel.dose_of(channel.program, old)
        request = self.build_request(
            channel,
            channel.program,
            self.now(),
            current,
            {"rate": {"value": str(new), "unit": "mL/h"}},
        )
        verdict = evaluate(self.library, parse_request(request))
        if verdict.verdict != "reject":
            return None
        data = verdict.to_dict()
        await self.journal.append(
            JournalKind.ALARM,
            {"type": "out_of_library_observed", "rate": float(new), "verdict": data},
            pump_id=channel.pump_id,
        )
        return data


def program_changed(command_id: str, program: Program) -> dict[str, Any]:
    """The ``program_changed`` event: what the pump now infuses, and for whom."""
    return {
        "type": "program_changed",
        "command_id": command_id,
        "program": {
            "drug": program.drug,
            "concentration": {
                "value": float(program.concentration),
                "unit": program.concentration_unit,
            },
            "dose_unit": program.dose_unit,
            "diluent": program.diluent,
            "route": program.route,
            "profile": program.profile,
            "weight_kg": float(program.weight_kg) if program.weight_kg is not None else None,
        },
    }


@dataclass(frozen=True, slots=True)
class _Plan:
    action: Action
    request: Any
    fingerprint: str
    program: Program | None
