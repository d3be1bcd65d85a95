"""SeqRanges against a plain set: the same membership, ranges and holes for any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.fleet.seqranges import SeqRanges

spans = st.lists(
    st.tuples(st.integers(1, 300), st.integers(0, 20)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=40,
)


def _ranges_of(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


@given(spans, st.integers(0, 400))
def test_ranges_holes_and_counts_match_a_plain_set(adds: list[tuple[int, int]], upto: int) -> None:
    tracker = SeqRanges()
    model: set[int] = set()
    for lo, hi in adds:
        fresh = set(range(lo, hi + 1)) - model
        assert tracker.add_range(lo, hi) == len(fresh)
        model |= fresh
    assert tracker.ranges == _ranges_of(model)
    assert len(tracker) == len(model)
    assert list(tracker) == sorted(model)
    holes = set(range(1, upto + 1)) - model
    assert tracker.missing(upto) == _ranges_of(holes)
    expected_run = 0
    while expected_run + 1 in model:
        expected_run += 1
    assert tracker.contiguous_upto == expected_run
    for seq in range(330):
        assert (seq in tracker) == (seq in model)


@given(st.lists(st.integers(1, 100)))
def test_add_says_whether_a_seq_was_new(seqs: list[int]) -> None:
    tracker = SeqRanges()
    seen: set[int] = set()
    for seq in seqs:
        assert tracker.add(seq) == (seq not in seen)
        seen.add(seq)


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"empty range 5\.\.4"):
        SeqRanges().add_range(5, 4)
