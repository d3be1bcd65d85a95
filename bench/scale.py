"""Bench ``scale``: how many pumps one daemon process polls at 1 Hz within budget.

Budget (target: >= 1000 pumps): p99 poll lateness <= 100 ms and <= 1 core. The simulators run in
other processes, :data:`bench.harness.UNITS_PER_SIM` Modbus unit ids each; pumps on one
simulator share one TCP connection and one bus lock, as pumps behind one Modbus gateway or on
one RTU line do. For each step N the bench starts a daemon with N pumps,
waits for READY=1 and a warm-up, then measures over a window:

* poll lateness: the daemon's own histogram (``INFUSIOND_BENCH_STATS``, read on SIGUSR1): how
  late each poll started against its schedule (previous start + poll period), window only;
* CPU: utime + stime from ``/proc/<pid>/stat`` over the window (1.0 = one core), and the share
  of the window the event loop was runnable but waiting for a CPU (``/proc/<pid>/schedstat``:
  the machine, not the daemon, was the bottleneck then);
* RSS at the end of the window, and the garbage collector's pauses in the window.

The ramp stops at the first step over budget. ``python -m bench.scale [--quick] [--steps 50,100]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Daemon,
    broker,
    cpu_share,
    modbus_sims,
    progress,
    sample,
    starved_share,
    write_config,
)

FULL_STEPS = (50, 100, 200, 500, 1000)
QUICK_STEPS = (50, 200)
TARGET_PUMPS = 1000
TARGET_P99_MS = 100.0
TARGET_CORES = 1.0


def window_quantile(before: dict[str, Any], after: dict[str, Any], q: float) -> float | None:
    """The ``q`` quantile (ms) of the polls recorded between two histogram snapshots."""
    counts: dict[int, int] = {}
    for ms, n in after["ms"].items():
        delta = n - before["ms"].get(ms, 0)
        if delta:
            counts[int(ms)] = delta
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for ms in sorted(counts):
        seen += counts[ms]
        if seen >= rank:
            return float(ms + 1)  # upper edge of the 1 ms bucket: never optimistic
    return float(max(counts) + 1)


def _step(
    n: int,
    mqtt_url: str,
    endpoints: list[tuple[str, int]],
    work: Path,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    config = write_config(
        work / "infusiond.toml",
        gateway_id=f"bench-scale-{n}",
        broker_url=mqtt_url,
        data_dir=work / "data",
        endpoints=endpoints[:n],
    )
    daemon = Daemon(config, work, stats=True)
    try:
        ready_s = daemon.wait_ready(timeout=120)
        time.sleep(warmup)  # a measurement window, not synchronisation: let start-up settle
        h0, s0 = daemon.poll_stats(), sample(daemon.pid)
        time.sleep(window)
        h1, s1 = daemon.poll_stats(), sample(daemon.pid)
    finally:
        daemon.close()
    polls = h1["total"] - h0["total"]
    p50, p99 = window_quantile(h0, h1, 0.5), window_quantile(h0, h1, 0.99)
    cores = cpu_share(s0, s1)
    gc0, gc1 = h0["gc"]["pauses"], h1["gc"]["pauses"]
    full_gcs = gc1["2"][0] - gc0["2"][0]
    ok = p99 is not None and p99 <= TARGET_P99_MS and cores <= TARGET_CORES
    return {
        "pumps": n,
        "ready_s": round(ready_s, 2),
        "polls": polls,
        "polls_per_s": round(polls / (s1.at - s0.at), 1),
        "lateness_p50_ms": p50,
        "lateness_p99_ms": p99,
        "cpu_cores": round(cores, 3),
        "waiting_for_cpu": round(starved_share(s0, s1), 3),
        "rss_mb": round(s1.rss_kb / 1024, 1),
        "full_gc_pauses": full_gcs,
        "full_gc_ms": round(gc1["2"][1] - gc0["2"][1], 1),
        "gc_max_pause_since_start_ms": h1["gc"]["max_ms"],
        "within_budget": ok,
    }


def measure(*, quick: bool = False, steps: tuple[int, ...] | None = None) -> dict[str, Any]:
    ramp = steps or (QUICK_STEPS if quick else FULL_STEPS)
    warmup, window = (3.0, 6.0) if quick else (5.0, 20.0)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        with broker(work) as mqtt, modbus_sims(max(ramp)) as sims:
            for n in ramp:
                step_dir = work / f"n{n}"
                step_dir.mkdir()
                progress(f"scale: {n} pumps ({window:g} s window)...")
                result = _step(n, mqtt.url, sims.endpoints, step_dir, warmup, window)
                progress(
                    f"scale: {n} pumps: lateness p99 {result['lateness_p99_ms']} ms, "
                    f"{result['cpu_cores']} core (waiting for a CPU {result['waiting_for_cpu']}), "
                    f"{result['polls_per_s']} polls/s, "
                    f"RSS {result['rss_mb']} MB"
                )
                results.append(result)
                if not result["within_budget"]:
                    break
    held = max((r["pumps"] for r in results if r["within_budget"]), default=0)
    wanted = min(TARGET_PUMPS, max(ramp))  # a short ramp can only show what it reaches
    return {
        "bench": "scale",
        "steps": results,
        "window_s": window,
        "rows": [
            {
                "figure": "scale: pumps held at 1 Hz (p99 lateness <= 100 ms, <= 1 core)",
                "value": held,
                "unit": "pumps",
                "baseline": None,
                "ratio": None,
                "target": f">= {wanted}"
                + (f" (quick ramp; full run: >= {TARGET_PUMPS})" if wanted < TARGET_PUMPS else ""),
                "met": held >= wanted,
            }
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", help="comma-separated pump counts, e.g. 50,100,200")
    args = parser.parse_args()
    steps = tuple(int(x) for x in args.steps.split(",")) if args.steps else None
    print(json.dumps(measure(quick=args.quick, steps=steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
