"""``python -m bench`` (``make bench``): every benchmark, side by side in one run.

Prints ONE JSON object on stdout: ``{"quick", "host", "results": {bench: details}, "rows":
[{"bench", "figure", "value", "unit", "baseline", "ratio", "target", "met"}, ...], "all_met"}``
and a human table on stderr, with progress lines on stderr while long benchmarks run.

    python -m bench [--quick] [--only check,command_rtt,...]   (names: see ``BENCHES``)

Each benchmark starts what it needs (a private mosquitto with ``set_tcp_nodelay true`` on a free
port, simulators in their own processes, the daemon as ``infusiond run --config``) and stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from bench import (
    check_bench,
    command_rtt,
    fleet_ingest,
    hl7_out,
    journal_startup,
    memory,
    modbus_poll,
    report_bench,
    scale,
    serial_bench,
    startup,
    ward_split,
)
from bench.harness import progress

Measure = Callable[..., dict[str, Any]]

#: in run order: the cheap in-process ones first, the long ramp last
BENCHES: dict[str, Measure] = {
    "check": check_bench.measure,
    "modbus_poll": modbus_poll.measure,
    "serial": serial_bench.measure,
    "command_rtt": command_rtt.measure,
    "startup": startup.measure,
    "journal_startup": journal_startup.measure,
    "report": report_bench.measure,
    "hl7_out": hl7_out.measure,
    "memory": memory.measure,
    "ward": ward_split.measure,
    "fleet_ingest": fleet_ingest.measure,
    "scale": scale.measure,
}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The human table: one line per figure."""
    head = ("figure", "value", "baseline", "ratio", "target", "met")
    lines = [
        (
            str(r["figure"]),
            f"{_fmt(r['value'])} {r['unit']}",
            f"{_fmt(r['baseline'])} {r['unit']}" if r["baseline"] is not None else "-",
            f"{_fmt(r['ratio'])}x" if r["ratio"] is not None else "-",
            str(r["target"]),
            "yes" if r["met"] else "NO",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [head]]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument(
        "--only", metavar="LIST", help=f"comma-separated subset of: {', '.join(BENCHES)}"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(
            f"--only: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}"
        )
    # library logs (driver link changes...) go to stderr, quietly: stdout carries the JSON only
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in names:
        progress(f"{name}: running{' (quick)' if args.quick else ''}")
        t0 = time.monotonic()
        result = BENCHES[name](quick=args.quick)
        progress(f"{name}: done in {time.monotonic() - t0:.1f} s")
        results[name] = result
        rows += [{"bench": name, **row} for row in result["rows"]]
    report = {
        "quick": args.quick,
        "host": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "duration_s": round(time.monotonic() - started, 1),
        },
        "results": results,
        "rows": rows,
        "all_met": all(r["met"] for r in rows),
    }
    sys.stderr.write("\n" + table(rows) + "\n")
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
