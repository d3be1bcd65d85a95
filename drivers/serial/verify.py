"""Pre-read, write, read back, judge: the write contract of every serial driver.

Every write reads the pump before (the *pre-read*) and after (the *read-back*); the outcome is
decided by what the read-back shows, not by the reply alone:

* ``applied``: the read-back shows what was asked -- also when the write's own reply was lost,
  or when the pump answered with an error or an alarm yet executed the command anyway (the
  detail then says what it answered);
* ``failed``: either no byte of the write went out (the line is down or not connected, the
  pre-read failed, the value cannot be written, or the precheck refused; the detail starts with
  ``not sent:``), or the pump refused *and* the read-back shows rate and run state exactly as
  before;
* ``uncertain``: anything else -- no valid reply and a read-back that does not show the change,
  a refusal followed by a read-back that shows some other change, or no read-back at all.
  Nothing is ever re-sent; the channel reconciles on its next poll.

Writes never raise: every device fault ends in one of the three outcomes.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from drivers.base import PumpStatus, RunState, WriteOutcome, WriteResult
from drivers.errors import DeviceRejected, DeviceTimeout, DriverError, FrameError
from drivers.serial.line import PortUnavailable

C = TypeVar("C")


class Answer(enum.Enum):
    """How the pump answered a write."""

    NONE = "nothing sent"
    ACCEPTED = "accepted"
    REFUSED = "refused"  # an error reply or an alarm in reply
    LOST = "no valid reply"


@dataclass(frozen=True, slots=True)
class Sent:
    sent: bool  # whether any byte of the write went out
    answer: Answer
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: PumpStatus
    device_state: RunState  # what the device itself says, before any alarm latch overlay


def not_sent(why: str, status: PumpStatus | None = None) -> WriteResult:
    return WriteResult(WriteOutcome.FAILED, status, detail=f"not sent: {why}")


async def send_each(commands: Sequence[C], execute: Callable[[C], Awaitable[object]]) -> Sent:
    """Send ``commands`` in order; stop at the first one not answered as executed."""
    sent = False
    for command in commands:
        try:
            await execute(command)
        except PortUnavailable as exc:
            if not sent:
                return Sent(sent=False, answer=Answer.NONE, detail=str(exc))
            return Sent(sent=True, answer=Answer.LOST, detail=str(exc))
        except DeviceRejected as exc:
            return Sent(sent=True, answer=Answer.REFUSED, detail=str(exc))
        except (DeviceTimeout, FrameError) as exc:
            return Sent(sent=True, answer=Answer.LOST, detail=str(exc))
        sent = True
    return Sent(sent=True, answer=Answer.ACCEPTED)


async def write_verified(
    snapshot: Callable[[], Awaitable[Snapshot]],
    send: Callable[[], Awaitable[Sent]],
    ok: Callable[[Snapshot], bool],
    goal: str,
    *,
    precheck: Callable[[Snapshot], WriteResult | None] | None = None,
    again: Callable[[Snapshot], bool] | None = None,
    may_write: Callable[[PumpStatus], Awaitable[bool]] | None = None,
) -> WriteResult:
    """Pre-read, write, read back, judge (module doc).

    ``may_write``: asked with the pre-read status, before anything is sent; False -> not sent.

    ``again``: when the read-back is not the goal but satisfies ``again``, the write is sent
    once more and read back again (New Era ``STP`` on a pump that the first one only paused);
    the read-back, never the lost or refused reply, decides this.
    """
    try:
        before = await snapshot()
    except DriverError as exc:
        return not_sent(f"pre-read failed: {exc}")
    if precheck is not None and (early := precheck(before)) is not None:
        return early
    if may_write is not None and not await may_write(before.status):
        return not_sent("the gateway could not record the write", before.status)
    sent = await send()
    if not sent.sent:
        return not_sent(sent.detail, before.status)
    try:
        after = await snapshot()
        if again is not None and not ok(after) and again(after):
            sent = await send()
            after = await snapshot()
    except DriverError as exc:
        what = sent.detail or "sent"
        return WriteResult(WriteOutcome.UNCERTAIN, None, detail=f"{what}; read-back failed: {exc}")
    return judge(before, after, sent, ok, goal)


def judge(
    before: Snapshot, after: Snapshot, sent: Sent, ok: Callable[[Snapshot], bool], goal: str
) -> WriteResult:
    """The outcome of a write that went out, from the read-back (see the module doc)."""
    readback = after.status
    if ok(after):
        if sent.answer is Answer.REFUSED:
            note = f" (the pump answered: {sent.detail}; the read-back shows it applied)"
        elif sent.answer is Answer.LOST:
            note = f" (reply lost: {sent.detail}; read-back confirms)"
        else:
            note = ""
        return WriteResult(WriteOutcome.APPLIED, readback, detail=f"{goal}{note}")
    unchanged = (
        readback.rate_ml_h == before.status.rate_ml_h and after.device_state is before.device_state
    )
    if sent.answer is Answer.REFUSED and unchanged:
        return WriteResult(
            WriteOutcome.FAILED,
            readback,
            detail=f"{sent.detail}; read-back shows rate and state unchanged",
        )
    shows = f"rate {readback.rate_ml_h} mL/h, {after.device_state.value}"
    why = (
        "pump accepted" if sent.answer is Answer.ACCEPTED else f"{sent.answer.value}: {sent.detail}"
    )
    changed = "unchanged" if unchanged else "changed"
    return WriteResult(
        WriteOutcome.UNCERTAIN,
        readback,
        detail=f"{why}, but the read-back ({shows}, {changed}) is not {goal}",
    )
