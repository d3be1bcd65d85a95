"""The refusal desk (daemon/mqtt/refusals.py) with a real journal file: a flood of refusals costs a
bounded number of journal rows, answers and tasks per window, and a huge pump id is capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from daemon.base.results import CommandResult, ErrorBody, ErrorCode
from daemon.base.topics import capped_id
from daemon.journal import AsyncJournal, JournalKind
from daemon.mqtt.refusals import MAX_MESSAGE_CHARS, RefusalDesk, RefusalLimits

WAIT_S = 10.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest_asyncio.fixture
async def journal(tmp_path: Path) -> AsyncIterator[AsyncJournal]:
    async with await AsyncJournal.open(tmp_path / "data", gateway_id="gw") as j:
        yield j


def bad_json() -> CommandResult:
    return CommandResult.rejected(None, error=ErrorBody(ErrorCode.BAD_JSON, "not JSON"))


def busy(cid: str) -> CommandResult:
    return CommandResult.rejected(cid, error=ErrorBody(ErrorCode.BUSY, "pump busy"))


class Desk:
    """A desk whose per-refusal sink is what the gate's is: journal one row, then answer."""

    def __init__(
        self, journal: AsyncJournal, limits: RefusalLimits, clock: FakeClock | None = None
    ) -> None:
        self.journal = journal
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.tasks: list[asyncio.Task[None]] = []
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        self.desk = RefusalDesk(
            journal=journal,
            refuse_one=self._refuse_one,
            answer=self._answer,
            limits=limits,
            **kwargs,
        )

    async def _refuse_one(self, pump_id: str, data: CommandResult, reply: Any) -> None:
        await self.journal.append(
            JournalKind.COMMAND, {"pump": pump_id[:64], "answer": data.to_json()}
        )
        await self._answer(pump_id, data, reply)

    async def _answer(self, pump_id: str, data: CommandResult, reply: Any) -> None:
        self.answers.append((pump_id, data.to_json()))  # as published

    def refuse(self, pump_id: str, data: CommandResult) -> None:
        worker = self.desk.refuse(pump_id, data, None, "test")
        if worker is not None:
            self.tasks.append(worker)

    async def settle(self) -> None:
        """Close the window and wait for the worker to finish its work."""
        self.desk.close_window()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*self.tasks)


async def command_rows(journal: AsyncJournal) -> list[dict[str, Any]]:
    return [row.payload for row in await journal.rows(kinds=[JournalKind.COMMAND])]


@pytest.mark.asyncio
async def test_a_burst_is_journaled_as_the_first_n_rows_plus_one_summary_per_code(
    journal: AsyncJournal,
) -> None:
    """5,000 refusals (two error codes) in one window: 50 rows of their own, 500 answers, and
    when the window ends one summary row per code counting the rest (4,500 unanswered)."""
    rig = Desk(journal, RefusalLimits(journal_per_window=50, answers_per_window=500))
    for i in range(5000):
        rig.refuse("pump-1", bad_json() if i % 2 else busy(f"c-{i}"))
    assert len(rig.tasks) == 1  # one worker, never a task per refusal
    await rig.settle()
    rows = await command_rows(journal)
    single = [r for r in rows if "answer" in r]
    summaries = [r["refusals"] for r in rows if "refusals" in r]
    assert len(single) == 50
    assert sorted(s["code"] for s in summaries) == ["bad_json", "busy"]
    assert sum(s["count"] for s in summaries) == 5000 - 50
    assert sum(s["unanswered"] for s in summaries) == 4500
    assert all(s["pumps"] == ["pump-1"] for s in summaries)
    assert len(rig.answers) == 500
    assert rig.desk.stats.unanswered == 4500


@pytest.mark.asyncio
async def test_journal_rows_per_window_are_bounded_whatever_the_rate(
    journal: AsyncJournal,
) -> None:
    """Three windows of 100, 2,000 and 20,000 refusals: each adds at most 10 rows of its own
    plus one summary per code, so 20,000 refusals cost no more rows than 2,000; a quiet
    window afterwards journals and answers every refusal again."""
    clock = FakeClock()
    limits = RefusalLimits(journal_per_window=10, answers_per_window=100)
    rig = Desk(journal, limits, clock)
    grown = []
    for burst in (100, 2000, 20_000):
        before = len(await command_rows(journal))
        for i in range(burst):
            rig.refuse("pump-1", bad_json() if i % 3 else busy(f"c-{burst}-{i}"))
        clock.t += limits.window_s
        await rig.settle()
        grown.append(len(await command_rows(journal)) - before)
    assert grown == [10 + 2, 10 + 2, 10 + 2]
    answered_before = len(rig.answers)
    for i in range(5):
        rig.refuse("pump-1", busy(f"quiet-{i}"))
    await rig.settle()
    rows = await command_rows(journal)
    assert [r["answer"]["id"] for r in rows[-5:]] == [f"quiet-{i}" for i in range(5)]
    assert len(rig.answers) == answered_before + 5


@pytest.mark.asyncio
async def test_a_huge_pump_id_is_capped_in_the_summary_and_its_message_is_cut(
    journal: AsyncJournal,
) -> None:
    """A 60,000-character pump id (a topic allows it): its answer still goes to that pump's
    topic, but the error message is cut to 512 characters and the summary names the id capped
    (64 characters plus its length and a hash)."""
    limits = RefusalLimits(
        journal_per_window=1, answers_per_window=10, anonymous_answers_per_window=10
    )
    rig = Desk(journal, limits)
    huge = "p" * 60_000
    message = f"no pump {huge!r} on this gateway"
    for _ in range(3):
        rig.refuse(
            huge, CommandResult.rejected(None, error=ErrorBody(ErrorCode.UNKNOWN_PUMP, message))
        )
    await rig.settle()
    assert [pump for pump, _ in rig.answers] == [huge] * 3
    assert all(len(data["error"]["message"]) <= MAX_MESSAGE_CHARS for _, data in rig.answers)
    (summary,) = [r["refusals"] for r in await command_rows(journal) if "refusals" in r]
    (shown,) = summary["pumps"]
    assert shown.startswith("p" * 64)
    assert "60000 chars" in shown
    assert len(shown) < 120


@pytest.mark.asyncio
async def test_a_garbage_flood_leaves_room_to_answer_refusals_that_carry_an_id(
    journal: AsyncJournal,
) -> None:
    """1,000 id-less refusals (bad JSON) take at most 100 of the window's 250 answers, so a
    client's own busy refusals (with their ids) in the same window are still answered."""
    rig = Desk(journal, RefusalLimits())
    for _ in range(1000):
        rig.refuse("pump-1", bad_json())
    for i in range(5):
        rig.refuse("pump-1", busy(f"mine-{i}"))
    await rig.settle()
    ids = [data["id"] for _, data in rig.answers]
    assert ids.count(None) == 100
    assert ids[-5:] == [f"mine-{i}" for i in range(5)]


def test_limits_are_checked() -> None:
    """A journal budget above the answer budget (a journaled refusal left unanswered) or a
    zero window is refused at construction."""
    with pytest.raises(ValueError, match="journal_per_window"):
        RefusalLimits(journal_per_window=10, answers_per_window=5)
    with pytest.raises(ValueError, match="anonymous"):
        RefusalLimits(answers_per_window=50, anonymous_answers_per_window=60)
    with pytest.raises(ValueError, match="window_s"):
        RefusalLimits(window_s=0)


def test_capped_ids_are_short_distinct_and_leave_normal_ids_alone() -> None:
    """A topic id over 64 characters is shown as its first 64, its length and a hash: two
    long ids with the same start stay distinct; an ordinary id is unchanged."""
    a, b = "x" * 60_000 + "a", "x" * 60_000 + "b"
    assert capped_id("pump-1") == "pump-1"
    assert capped_id("p" * 64) == "p" * 64
    assert capped_id(a) != capped_id(b)
    assert capped_id(a).startswith("x" * 64)
    assert "60001 chars" in capped_id(a)
    assert len(capped_id(a)) < 120
    assert capped_id("\ud800" * 100).encode("utf-8", "strict")
