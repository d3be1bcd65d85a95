"""Poll lateness for benchmarks: off unless ``$INFUSIOND_BENCH_STATS`` names a file.

When enabled, every channel records how late each poll started against its schedule (the
previous start plus the poll period) into one process-wide histogram with 1 ms buckets; on
SIGUSR1 the service writes the histogram as JSON to that file (by rename, so a reader never
sees half a file). ``bench/scale.py`` reads it. Garbage-collector pauses are timed too.
Disabled, :data:`LATENESS` is None and a channel pays one ``is None`` test per poll.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from pathlib import Path

from daemon.base.payload import JsonObject

ENV_VAR = "INFUSIOND_BENCH_STATS"
BUCKETS = 10_000  # 1 ms each; the last one collects everything >= 10 s


class LatenessHistogram:
    """Counts of poll lateness in 1 ms buckets (negative lateness counts as 0), plus the
    garbage collector's pauses per generation (a full collection stops the event loop)."""

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.gc_pauses: dict[str, list[float]] = {"0": [0, 0.0], "1": [0, 0.0], "2": [0, 0.0]}
        self.gc_max_ms = 0.0
        self._gc_started = 0.0
        self._writing: asyncio.Future[None] | None = None

    def watch_gc(self) -> None:
        """Time every collection (count and total ms per generation, longest pause)."""
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_started) * 1000
        entry = self.gc_pauses[str(info["generation"])]
        entry[0] += 1
        entry[1] += ms
        self.gc_max_ms = max(self.gc_max_ms, ms)

    def record(self, late_s: float) -> None:
        bucket = int(late_s * 1000) if late_s > 0 else 0
        self.counts[bucket if bucket < BUCKETS else BUCKETS - 1] += 1
        self.total += 1

    def snapshot(self) -> JsonObject:
        """``{"total": n, "ms": {bucket_ms: count, ...}}`` with empty buckets left out: the JSON
        file the benchmark reads (:meth:`dump`)."""
        return {
            "total": self.total,
            "ms": {str(ms): n for ms, n in enumerate(self.counts) if n},
            "gc": {
                "pauses": {g: [n, round(ms, 3)] for g, (n, ms) in self.gc_pauses.items()},
                "max_ms": round(self.gc_max_ms, 3),
                "frozen": gc.get_freeze_count(),  # objects kept out of collections
            },
        }

    def dump(self, path: Path) -> None:
        """Write :meth:`snapshot` to ``path`` atomically (blocking: not on the event loop)."""
        _write_atomic(path, json.dumps(self.snapshot()))

    def dump_soon(self, path: Path) -> None:
        """The SIGUSR1 handler, on the event loop: take the snapshot now, write it from a worker
        thread (a write to a busy disk must not delay the polls being measured)."""
        text = json.dumps(self.snapshot())
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(None, _write_atomic, path, text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _from_env() -> tuple[LatenessHistogram | None, Path | None]:
    target = os.environ.get(ENV_VAR)
    if not target:
        return None, None
    histogram = LatenessHistogram()
    histogram.watch_gc()
    return histogram, Path(target)


#: the process-wide histogram, or None when the benchmark hook is off (the default)
LATENESS, STATS_PATH = _from_env()
