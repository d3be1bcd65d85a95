"""The answers of one command: where they go (``ReplyTo``, the result sink), and the
``readback`` and final result of a verified write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon.base.quantities import Quantity
from daemon.base.results import PENDING, CommandResult, ErrorBody, ErrorCode, Readback
from daemon.core.channel import Channel
from daemon.core.command_life import no_outcome_yet
from daemon.core.program import Program
from daemon.journal.records import CommandClaim
from drivers.base import PumpStatus, WriteOutcome, WriteResult


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """MQTT v5 request/response properties to honour on the answers."""

    response_topic: str
    correlation_data: bytes | None = None


ResultSink = Callable[[str, CommandResult, "ReplyTo | None"], Awaitable[None]]


def readback_of(channel: Channel, status: PumpStatus, program: Program | None = None) -> Readback:
    """The result's ``readback``; its dose under ``program`` (default: the channel's)."""
    running = program or channel.program
    dose = channel.dose_at(running, status.rate_ml_h)
    return Readback(
        status.state.value,
        Quantity.rate(status.rate_ml_h),
        None if dose is None else Quantity(float(round(dose, 6)), running.dose_unit),
    )


def answer_for(channel: Channel, command_id: str, result: WriteResult) -> CommandResult:
    """The final result of a verified write: ``applied`` (only with a read-back), ``failed``
    or ``uncertain``."""
    if result.outcome is WriteOutcome.APPLIED and result.readback is not None:
        return CommandResult.applied(command_id, readback=readback_of(channel, result.readback))
    if result.outcome is WriteOutcome.FAILED:
        code = (
            ErrorCode.NOT_SENT
            if result.detail.startswith("not sent")
            else ErrorCode.DEVICE_REJECTED
        )
        return CommandResult.failed(
            command_id,
            error=ErrorBody(code, result.detail or "device refused"),
            readback=readback_of(channel, result.readback) if result.readback else None,
        )
    return CommandResult.uncertain(
        command_id, error=ErrorBody(ErrorCode.DEVICE_TIMEOUT, result.detail or "no answer")
    )


def told_repeat(command_id: str, pump_id: str, claim: CommandClaim) -> CommandResult:
    """The answer to a known id that is not resumed: ``duplicate`` with its first outcome, or,
    while that first has none recorded, refused (see :func:`no_outcome_yet`)."""
    first = claim.first or PENDING
    if first.phase is None:
        return CommandResult.rejected(
            command_id, error=no_outcome_yet(command_id, pump_id, claim.pump)
        )
    return CommandResult.duplicate(command_id, first=first.first)


def bad_request(command_id: str, why: str) -> CommandResult:
    """``rejected`` with ``bad_request`` and ``why``."""
    return CommandResult.rejected(command_id, error=ErrorBody(ErrorCode.BAD_REQUEST, why))


def fault_answer(command_id: str, error: ErrorBody, *, accepted: bool) -> CommandResult:
    """The answer when a command's supervisor caught a fault: ``uncertain`` once its
    ``accepted`` is durable (the write may have gone out), else ``rejected`` (nothing did)."""
    if accepted:
        return CommandResult.uncertain(command_id, error=error)
    return CommandResult.rejected(command_id, error=error)
