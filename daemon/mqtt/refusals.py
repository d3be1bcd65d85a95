"""Refusals: commands answered ``rejected`` before the gate checked anything (bad JSON, bad
request, unknown pump, control disabled, not authorized, busy...), at bounded cost.

A flood of garbage on ``pump/+/command`` must not cost memory, CPU or journal rows in
proportion to its rate, and must not delay the answers to legitimate commands (those take the
gate's checked path, not this one). So, per window of ``window_s`` (1 s by default):

- the first ``journal_per_window`` refusals are journaled one row each (``{"pump", "answer"}``,
  as before), logged, and answered;
- the next ones, up to ``answers_per_window`` in all, are answered but not journaled one by
  one: they are counted per error code. Refusals without a command id (bad JSON, too large...)
  may take only the first ``anonymous_answers_per_window`` of those answers, so that a flood of
  garbage leaves room to answer a client's own refused command (``busy``...), which it can
  match by its id;
- the rest are neither answered nor journaled one by one: counted as ``unanswered``;
- when the window ends, one summary row per error code with a count is journaled
  (``{"refusals": {"code", "count", "unanswered", "from", "to", "pumps"}}``) and logged.

So the journal grows by at most ``journal_per_window`` + one row per error code per window,
whatever the rate. :meth:`RefusalDesk.refuse` is synchronous and O(1): it never creates a
task per refusal. The work goes through a bounded queue drained by one worker task, started
when there is work and ending when there is none (its owner keeps the reference it returns).
A pump id taken from the topic is capped (:func:`daemon.base.topics.capped_id`) before it is
journaled or logged, and an error message longer than :data:`MAX_MESSAGE_CHARS` is cut.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog

from daemon.base.payload import JsonObject
from daemon.base.results import CommandResult
from daemon.base.timefmt import format_ts
from daemon.base.topics import capped_id
from daemon.journal.records import JournalError, JournalKind, JournalRow
from drivers.clock import utc_now

log = structlog.get_logger("infusiond.refusals")

MAX_MESSAGE_CHARS = 512
MAX_SAMPLE_PUMPS = 3  # pump ids named in a summary row


class _Journal(Protocol):
    async def append(
        self,
        kind: JournalKind,
        payload: JsonObject,
        *,
        pump_id: str | None = None,
        ts: datetime | None = None,
    ) -> JournalRow: ...


#: where an answer goes besides the result topic (the gate's ``ReplyTo | None``): the desk only
#: carries it from :meth:`RefusalDesk.refuse` to the callables below
Reply = TypeVar("Reply")
#: (pump_id, answer, reply): journal one refusal and answer it (``Gate._refuse``)
RefuseOne = Callable[[str, CommandResult, Reply], Coroutine[Any, Any, None]]
#: (pump_id, answer, reply): publish an answer (``Gate.send_result``)
AnswerOne = Callable[[str, CommandResult, Reply], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RefusalLimits:
    """Budgets per window; ``journal_per_window`` must not exceed ``answers_per_window``
    (a refusal journaled one by one is always answered)."""

    window_s: float = 1.0
    journal_per_window: int = 20
    answers_per_window: int = 250
    anonymous_answers_per_window: int = 100  # of those, to refusals without an id
    queue_size: int = 1024

    def __post_init__(self) -> None:
        if not 0 < self.journal_per_window <= self.answers_per_window <= self.queue_size:
            raise ValueError(
                "RefusalLimits needs 0 < journal_per_window <= answers_per_window <= queue_size"
            )
        if not 0 < self.anonymous_answers_per_window <= self.answers_per_window:
            raise ValueError(
                "RefusalLimits needs 0 < anonymous_answers_per_window <= answers_per_window"
            )
        if self.window_s <= 0:
            raise ValueError("RefusalLimits needs window_s > 0")


@dataclass(slots=True)
class _Tally:
    """Refusals of one error code in one window that were not journaled one by one."""

    count: int = 0
    unanswered: int = 0
    pumps: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """The refusals of one error code in one closed window that were not journaled one by one
    (a ``command`` journal row of their own)."""

    code: str
    count: int
    unanswered: int
    since: datetime
    until: datetime
    pumps: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """The journal row: ``{"refusals": {code, count, unanswered, from, to, pumps}}``."""
        return {
            "refusals": {
                "code": self.code,
                "count": self.count,
                "unanswered": self.unanswered,
                "from": format_ts(self.since),
                "to": format_ts(self.until),
                "pumps": list(self.pumps),
            }
        }


@dataclass(frozen=True, slots=True)
class _Work(Generic[Reply]):
    pump_id: str
    data: CommandResult
    reply: Reply
    journal: bool  # one row of its own (else counted in the window's summary)


@dataclass
class RefusalStats:
    """Totals since start (for tests and diagnostics)."""

    refused: int = 0
    journaled: int = 0
    answered: int = 0
    unanswered: int = 0
    summary_rows: int = 0


class RefusalDesk(Generic[Reply]):
    """Rate-limits, aggregates and performs refusals; see the module docstring."""

    def __init__(
        self,
        *,
        journal: _Journal,
        refuse_one: RefuseOne[Reply],
        answer: AnswerOne[Reply],
        limits: RefusalLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._journal = journal
        self._refuse_one = refuse_one
        self._answer = answer
        self.limits = limits or RefusalLimits()
        self._clock = clock
        self._now = now
        self._queue: collections.deque[_Work[Reply]] = collections.deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._window_start = clock()
        self._window_from = now()
        self._journaled = 0  # in this window
        self._answered = 0  # in this window
        self._tallies: dict[str, _Tally] = {}
        self._summaries: list[RefusalSummary] = []  # closed windows', not yet journaled
        self.stats = RefusalStats()

    def refuse(
        self, pump_id: str, data: CommandResult, reply: Reply, why: str
    ) -> asyncio.Task[None] | None:
        """Take one refusal (``data`` is its ``rejected`` answer). Returns the worker task when
        this call started it (the caller keeps the reference), else None."""
        self._roll()
        self.stats.refused += 1
        journal = self._journaled < self.limits.journal_per_window
        budget = (
            self.limits.answers_per_window
            if data.id is not None
            else self.limits.anonymous_answers_per_window
        )
        answer = self._answered < budget and len(self._queue) < self.limits.queue_size
        if journal and answer:
            self._journaled += 1
            log.info("command_refused", pump=capped_id(pump_id), id=data.id, reason=why[:200])
        else:
            tally = self._tallies.setdefault(_code(data), _Tally())
            tally.count += 1
            if len(tally.pumps) < MAX_SAMPLE_PUMPS:  # cap (and hash) only the few named
                shown = capped_id(pump_id)
                if shown not in tally.pumps:
                    tally.pumps.append(shown)
            if not answer:
                tally.unanswered += 1
                self.stats.unanswered += 1
        if answer:
            self._answered += 1
            self._queue.append(_Work(pump_id, _short(data), reply, journal=journal))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="refusals")
            return self._worker
        return None

    def close_window(self) -> None:
        """End the current window now (its summary rows are written without waiting for
        the window to run out): for shutdown and tests."""
        self._window_start = -math.inf
        self._wake.set()

    # -- windows -------------------------------------------------------------------------------

    def _roll(self) -> None:
        """Close the window if it is over: its tallies become summary rows to journal."""
        now = self._clock()
        if now - self._window_start < self.limits.window_s:
            return
        if self._tallies:
            to = self._now()
            for code, tally in sorted(self._tallies.items()):
                self._summaries.append(
                    RefusalSummary(
                        code,
                        tally.count,
                        tally.unanswered,
                        self._window_from,
                        to,
                        tuple(tally.pumps),
                    )
                )
            self._tallies = {}
        self._window_start = now
        self._window_from = self._now()
        self._journaled = 0
        self._answered = 0

    # -- the worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            self._roll()
            if self._queue:
                batch = list(self._queue)
                self._queue.clear()
                await self._perform(batch)
            elif self._summaries:
                await self._write_summaries()
            elif self._tallies:  # wait for the window to end (or for more work)
                self._wake.clear()
                remaining = self.limits.window_s - (self._clock() - self._window_start)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
            else:
                return

    async def _perform(self, batch: list[_Work[Reply]]) -> None:
        """Journal-and-answer the window's first refusals together (the journal commits them
        as one group), then answer the others in arrival order."""
        async with asyncio.TaskGroup() as tg:
            for work in batch:
                if work.journal:
                    tg.create_task(
                        self._refuse_one(work.pump_id, work.data, work.reply),
                        name="refusal-journal",
                    )
        for work in batch:
            if not work.journal:
                await self._answer(work.pump_id, work.data, work.reply)
        self.stats.journaled += sum(1 for w in batch if w.journal)
        self.stats.answered += len(batch)

    async def _write_summaries(self) -> None:
        rows, self._summaries = self._summaries, []
        for summary in rows:
            log.warning(
                "command_refusals_summarised",
                code=summary.code,
                count=summary.count,
                unanswered=summary.unanswered,
            )
            try:
                await self._journal.append(JournalKind.COMMAND, summary.to_json())
            except JournalError as exc:
                log.critical("journal_unavailable", what="refusal summary", error=str(exc))
                continue
            self.stats.summary_rows += 1


def _code(data: CommandResult) -> str:
    return "verdict" if data.error is None else data.error.code.value


def _short(data: CommandResult) -> CommandResult:
    """``data`` with an error message cut to :data:`MAX_MESSAGE_CHARS` (an unknown pump's
    message quotes its id, which a topic lets grow to 65,000 characters)."""
    error = data.error
    if error is None or len(error.message) <= MAX_MESSAGE_CHARS:
        return data
    message = error.message
    cut = f"{message[: MAX_MESSAGE_CHARS - 40]}... [{len(message)} characters]"
    return replace(data, error=replace(error, message=cut))
