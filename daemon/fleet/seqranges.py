"""A set of seqs kept as sorted, disjoint, non-adjacent inclusive ranges (pure, no I/O).

The collector keeps one per gateway session for what it has seen itself, to tell at once
whether a batch continued the run (nothing to check) or left a hole (ask the store).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class SeqRanges:
    """Held seqs as ranges: ``add``/``add_range``, ``missing(upto)``, ``ranges``."""

    __slots__ = ("_his", "_los")

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self._los: list[int] = []
        self._his: list[int] = []
        for seq in seqs:
            self.add(seq)

    def add(self, seq: int) -> bool:
        """Hold ``seq``; True when it was new."""
        return self.add_range(seq, seq) > 0

    def add_range(self, lo: int, hi: int) -> int:
        """Hold every seq in ``lo..hi`` (inclusive); returns how many were new."""
        if hi < lo:
            raise ValueError(f"empty range {lo}..{hi}")
        # first range that could touch [lo, hi]: its hi >= lo - 1
        i = bisect.bisect_left(self._his, lo - 1)
        j = i
        new = hi - lo + 1
        new_lo, new_hi = lo, hi
        while j < len(self._los) and self._los[j] <= hi + 1:
            overlap = min(hi, self._his[j]) - max(lo, self._los[j]) + 1
            new -= max(overlap, 0)
            new_lo = min(new_lo, self._los[j])
            new_hi = max(new_hi, self._his[j])
            j += 1
        self._los[i:j] = [new_lo]
        self._his[i:j] = [new_hi]
        return new

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_left(self._his, seq)
        return i < len(self._los) and self._los[i] <= seq

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in zip(self._los, self._his, strict=True))

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The held seqs as sorted inclusive ranges."""
        return list(zip(self._los, self._his, strict=True))

    @property
    def contiguous_upto(self) -> int:
        """``n`` when ``1..n`` are all held (0 when 1 is not)."""
        return self._his[0] if self._los and self._los[0] == 1 else 0

    def missing(self, upto: int, *, start: int = 1) -> list[tuple[int, int]]:
        """The ranges of seqs in ``start..upto`` not held."""
        gaps: list[tuple[int, int]] = []
        expect = start
        for lo, hi in self.ranges:
            if hi < expect:
                continue
            if lo > upto:
                break
            if lo > expect:
                gaps.append((expect, lo - 1))
            expect = hi + 1
        if expect <= upto:
            gaps.append((expect, upto))
        return gaps
