"""The CQI model's hospital total (:func:`merge`): for any facts of two gateways, the total
is the sum of the gateways' counts, whatever their order, and a pump of one gateway never
affects the other's (pumps are keyed per gateway)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from daemon.base.timefmt import format_ts
from daemon.pharmacy.report_facts import (
    Accepted,
    Fact,
    Judged,
    Overridden,
    ProgramSeen,
    RateChangeSeen,
    VerdictSeen,
)
from daemon.pharmacy.report_model import Cell, Report, Window, merge
from protocol.verdict import Outcome

T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
PUMPS = ("pump-1", "pump-2")
COUNTS = (
    "programmings",
    "accepted_outright",
    "confirmations_asked",
    "overrides",
    "hard_rejections",
    "catches",
    "observed_outside_library",
    "rate_changes_gated",
    "rate_changes_at_pump",
)

steps = st.lists(
    st.tuples(
        st.sampled_from(("program", "judged", "override", "accepted", "rate")),
        st.sampled_from(PUMPS),
        st.integers(0, 5),  # command number (repeats: the same command seen again)
        st.sampled_from(("accept", "confirm", "reject")),
        st.integers(1, 400),  # seconds since the previous step
    ),
    max_size=30,
)


def facts(script: list[tuple[str, str, int, str, int]]) -> list[Fact]:
    out: list[Fact] = []
    at = T0
    for kind, pump, n, outcome, gap in script:
        at += timedelta(seconds=gap)
        ts, cid = format_ts(at), f"c{n}"
        if kind == "program":
            out.append(ProgramSeen(pump, f"drug-{n % 2}", "adult-icu"))
        elif kind == "judged":
            out.append(Judged(ts, pump, cid, VerdictSeen(Outcome(outcome))))
        elif kind == "override":
            out.append(Overridden(ts, pump, cid, "nurse-1", "why", ("SOFT_MAX",)))
        elif kind == "accepted":
            out.append(Accepted(ts, pump, cid))
        else:
            out.append(RateChangeSeen(ts, pump, gated=outcome != "reject"))
    return out


def report(gateway: str, script: list[tuple[str, str, int, str, int]], window: Window) -> Report:
    part = Report(window=window, gateway=gateway)
    for fact in facts(script):
        part.take(fact)
    return part


def counted(cell: Cell) -> dict[str, int]:
    return {name: getattr(cell, name) for name in COUNTS}


@given(steps, steps, st.integers(0, 3000))
def test_the_hospital_total_is_the_sum_of_its_gateways_in_any_order(
    one: list[tuple[str, str, int, str, int]],
    two: list[tuple[str, str, int, str, int]],
    start_s: int,
) -> None:
    """Counts per drug x profile and in total add up; lists hold both gateways' items, each
    naming its gateway, in time order; the order of the gateways does not matter."""
    window = Window(start=format_ts(T0 + timedelta(seconds=start_s)))
    a, b = report("gw-a", one, window), report("gw-b", two, window)
    total = merge([a, b], window)
    assert counted(total.total) == {
        name: getattr(a.total, name) + getattr(b.total, name) for name in COUNTS
    }
    for key, cell in total.cells.items():
        parts = [p.cells[key] for p in (a, b) if key in p.cells]
        assert counted(cell) == {n: sum(getattr(p, n) for p in parts) for n in COUNTS}
    assert len(total.overrides) == len(a.overrides) + len(b.overrides)
    assert [o.ts for o in total.overrides] == sorted(o.ts for o in total.overrides)
    assert {o.gateway for o in total.catches} <= {"gw-a", "gw-b"}
    swapped = merge([b, a], window)
    assert swapped.rows() == total.rows()
    assert swapped.daily == total.daily


@given(steps)
def test_a_gateways_counts_do_not_depend_on_another_gateway_with_the_same_pump_ids(
    script: list[tuple[str, str, int, str, int]],
) -> None:
    """Each gateway's report is computed alone: the same pump ids and command ids elsewhere
    change nothing (a pump is (gateway, pump_id))."""
    window = Window()
    alone = report("gw-a", script, window)
    beside = merge([report("gw-a", script, window), report("gw-b", script, window)], window)
    assert counted(beside.total) == {n: 2 * v for n, v in counted(alone.total).items()}
