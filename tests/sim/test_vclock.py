"""The virtual-time loop: time jumps to the next timer instead of passing."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.sim.adapter import journal_refusal_summaries
from tests.sim.fakes import CrashPoint, LinkFault
from tests.sim.harness import (
    CrashAt,
    Fault,
    Heal,
    Panel,
    Restart,
    Send,
    Wait,
    generate,
    run_schedule,
)
from tests.sim.vclock import EPOCH, VirtualTimeDeadlock, VirtualTimeLoop


def run(coro_factory):  # type: ignore[no-untyped-def]
    loop = VirtualTimeLoop()
    try:
        return loop, loop.run_until_complete(coro_factory())
    finally:
        loop.close()


def test_an_hour_of_sleep_takes_no_real_time_and_reads_an_hour_on_both_clocks() -> None:
    """asyncio.sleep(3600) returns at virtual 3600 s; the wall clock moved by the same hour."""

    async def sleeper() -> tuple[float, object]:
        await asyncio.sleep(3600)
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        return loop.time(), loop.wall_clock()

    started = time.perf_counter()
    _loop, (virtual, wall) = run(sleeper)
    assert virtual == 3600
    assert (wall - EPOCH).total_seconds() == 3600  # type: ignore[operator]
    assert time.perf_counter() - started < 1.0


def test_timers_fire_in_virtual_deadline_order_whatever_the_order_they_were_set() -> None:
    """Three sleepers finish in the order of their virtual deadlines, at those deadlines."""

    async def race() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        done: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            done.append((name, loop.time()))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper("late", 30.0))
            tg.create_task(sleeper("early", 0.5))
            tg.create_task(sleeper("middle", 7.25))
        return done

    _loop, done = run(race)
    assert done == [("early", 0.5), ("middle", 7.25), ("late", 30.0)]


def test_timeouts_expire_in_virtual_time() -> None:
    """asyncio.timeout(5) around a wait that never ends raises at virtual 5 s."""

    async def waits_forever() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.Event().wait()
        return asyncio.get_running_loop().time()

    _loop, at = run(waits_forever)
    assert at == 5


def test_a_loop_with_nothing_to_do_and_no_timer_is_reported_as_a_deadlock() -> None:
    """Instead of blocking forever, the loop raises VirtualTimeDeadlock."""

    async def stuck() -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeDeadlock, match="no timer set"):
        run(stuck)


def test_one_seed_replays_the_same_run_twice() -> None:
    """Determinism: a seed gives the same schedule, and a schedule the same results, writes
    and events at the same virtual times (what makes `make fuzz SEED=n` a replay)."""
    assert generate(11, 30) == generate(11, 30)
    schedule = [
        Send("pump-1", "set_dose", "d-1", value=0.06),
        Wait(2),
        Panel("pump-2", Decimal("6.0")),
        CrashAt("pump-1", CrashPoint.AFTER_WRITE),
        Send("pump-1", "set_rate", "d-2", value=60.0),
        Wait(3),
        Fault("pump-2", LinkFault.SILENT),
        Send("pump-2", "set_dose", "d-3", value=0.02),
        Wait(4),
        Heal("pump-2"),
        Restart(),
        Wait(2),  # a pump not read since the restart answers busy
        Send("pump-1", "set_dose", "d-4", value=0.05),
        Wait(2),
    ]
    first: list[str] = []
    second: list[str] = []
    outcomes = [run_schedule(schedule, trace=trace) for trace in (first, second)]
    assert str(outcomes[0]) == str(outcomes[1])
    assert sum(" write " in line for line in first) >= 3
    assert first == second


def test_refusal_windows_run_on_virtual_time_so_a_flood_is_summarised_the_same_way_twice() -> None:
    """Two floods of 25 expired commands 1.5 virtual seconds apart: every command is answered
    ``rejected`` (expired); in each 1 s window the first 20 refusals are journaled one by one
    and the other 5 become one summary row, closed when the window ends in virtual time; two
    runs give the same answers and the same rows."""
    flood = [
        Send("pump-1", "pause", f"x{wave}-{n}", age_s=45.0) for wave in (1, 2) for n in range(25)
    ]
    schedule = [*flood[:25], Wait(1.5), *flood[25:], Wait(2)]
    runs: list[tuple[dict[str, list[str]], list[dict[str, Any]]]] = []
    for _ in range(2):
        answers: dict[str, list[str]] = {}
        summaries: list[dict[str, Any]] = []

        def read(data_dir: Path, into: list[dict[str, Any]] = summaries) -> None:
            into.extend(journal_refusal_summaries(data_dir))

        assert run_schedule(schedule, answers=answers, on_finish=read) is None
        runs.append((answers, summaries))
    answers, summaries = runs[0]
    assert answers == {step.cid: ["rejected:expired"] for step in flood}
    assert [(s["code"], s["count"], s["unanswered"], s["from"], s["to"]) for s in summaries] == [
        ("expired", 5, 0, "2026-03-01T08:00:02.000Z", "2026-03-01T08:00:03.000Z"),
        ("expired", 5, 0, "2026-03-01T08:00:03.000Z", "2026-03-01T08:00:04.000Z"),
    ]
    assert runs[1] == runs[0]
