"""Bench ``report``: ``infusiond report`` over a 90-day journal of a busy bed (target: a few
seconds for 200,000 rows).

A valid hash-chained journal is generated with the shapes the gateway writes: per
programming a command row, a verdict row and its outcome rows (accepted then applied), the
``rate_changed`` event; one in ten needs a confirmation (and is overridden with a reason), one
in fifty is a hard rejection followed by an accepted dose (a catch); front-panel changes and
``out_of_library_observed`` now and then. Two pumps, 90 days. Then, each in a fresh process:

- ``infusiond report --format json`` and ``--format html`` (charts included), wall time;
- the baseline: a raw ``sqlite3`` read of every row plus ``json.loads`` of each payload (the
  floor of looking at the journal at all).

    python -m bench.report_bench [--rows N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.base.envelope import encode
from daemon.base.paths import journal_path
from daemon.base.timefmt import format_ts
from daemon.journal import GENESIS_HASH, Journal, row_hash

ROWS_FULL = 200_000
ROWS_QUICK = 20_000
TARGET_S = 5.0
SPAN = timedelta(days=90)
LIB = {"name": "vasopressors-example", "version": "2026.11.1", "sha256": "c" * 64}
PUMPS = (("pump-1", "norepinephrine", "ug/kg/min"), ("pump-2", "vasopressin", "[USP'U]/min"))
_BATCH = 5000


def _finding(rule: str, severity: str) -> dict[str, Any]:
    return {"rule": rule, "severity": severity, "message": f"{rule} (bench)"}


def _verdict(kind: str, rate: float, unit: str) -> dict[str, Any]:
    findings = {
        "accept": [_finding("VITALS_STALE", "advisory")],
        "confirm": [_finding("SOFT_MAX", "confirm")],
        "reject": [_finding("HARD_MAX", "reject")],
    }[kind]
    return {
        "verdict": kind,
        "rate": {"value": rate, "unit": "mL/h"},
        "dose": {"value": rate / 1000, "unit": unit},
        "findings": findings,
        "library": LIB,
    }


def _session(rows: int) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """(kind, pump_id, payload) rows in journal order, about ``rows`` of them."""
    yield (
        "state",
        None,
        {
            "programs": {
                p: {"drug": d, "profile": "adult-icu", "dose_unit": u} for p, d, u in PUMPS
            },
            "library": LIB,
        },
    )
    n, seq, k = 1, 0, 0
    while n < rows:
        k += 1
        pump, _drug, unit = PUMPS[k % 2]
        cid = f"c-{k}"
        kind = "reject" if k % 50 == 0 else "confirm" if k % 10 == 0 else "accept"
        rate = float(20 + k % 40)
        verdict = _verdict(kind, rate, unit)
        yield ("command", pump, {"id": cid, "command": {"id": cid, "action": "set_dose"}})
        yield ("verdict", pump, {"id": cid, "verdict": verdict})
        n += 2
        if kind == "reject":
            yield (
                "command",
                pump,
                {"id": cid, "outcome": {"phase": "rejected", "verdict": verdict}},
            )
            n += 1
            continue
        if kind == "confirm":
            yield ("command", pump, {"id": cid, "outcome": {"phase": "needs_confirmation"}})
            yield (
                "override",
                pump,
                {
                    "type": "override_accepted",
                    "command_id": cid,
                    "clinician": f"dr-{k % 7}",
                    "reason": "MAP below target despite current dose",
                    "findings": verdict["findings"],
                },
            )
            n += 2
        yield ("command", pump, {"id": cid, "outcome": {"phase": "accepted", "verdict": verdict}})
        seq += 1
        change = {
            "from": {"rate": {"value": rate - 1, "unit": "mL/h"}},
            "to": {"rate": {"value": rate, "unit": "mL/h"}},
        }
        yield (
            "event",
            pump,
            {"seq": seq, "event": {"type": "rate_changed", "command_id": cid, **change}},
        )
        yield ("command", pump, {"id": cid, "outcome": {"phase": "applied", "readback": {}}})
        n += 3
        if k % 25 == 0:
            seq += 1
            yield (
                "event",
                pump,
                {"seq": seq, "event": {"type": "rate_changed", "source": "device", **change}},
            )
            seq += 1
            yield (
                "event",
                pump,
                {
                    "seq": seq,
                    "event": {
                        "type": "out_of_library_observed",
                        "verdict": _verdict("confirm", rate, unit),
                    },
                },
            )
            n += 2


def build_journal(data_dir: Path, rows: int, *, end: datetime, span: timedelta = SPAN) -> int:
    """A valid journal of about ``rows`` rows over ``span``; returns the exact count."""
    Journal.open(data_dir, gateway_id="bench").close()
    items = list(_session(rows))
    step = span / len(items)
    start = end - span
    conn = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    prev = GENESIS_HASH
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        batch: list[tuple[Any, ...]] = []
        for n, (kind, pump, payload) in enumerate(items, start=1):
            ts = format_ts(start + step * n)
            text = encode(payload).decode()
            digest = row_hash(prev, n, ts, kind, pump, payload_text=text)
            event_type = payload["event"]["type"] if kind == "event" else None
            batch.append((n, ts, kind, pump, text, prev, digest, event_type))
            prev = digest
            if len(batch) == _BATCH:
                _insert(conn, batch)
                batch = []
        _insert(conn, batch)
        conn.executemany(
            "UPDATE meta SET value=? WHERE key=?",
            [(str(len(items)), "head_n"), (prev, "head_hash")],
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return len(items)


def _insert(conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO journal (n, ts, kind, pump_id, payload, prev_hash, hash, event_type)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )


_BASELINE = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
n = sum(1 for (p,) in conn.execute("SELECT payload FROM journal ORDER BY n") if json.loads(p))
print(n)
"""


def _timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def measure(*, quick: bool = False, rows: int | None = None) -> dict[str, Any]:
    wanted = rows or (ROWS_QUICK if quick else ROWS_FULL)
    runs = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        data = Path(tmp) / "data"
        count = build_journal(data, wanted, end=datetime.now(UTC))
        report = [sys.executable, "-m", "daemon.cli", "report", "--data-dir", str(data)]
        times = {
            fmt: statistics.median(
                _timed([*report, "--format", fmt, "--out", str(Path(tmp) / f"r.{fmt}")])
                for _ in range(runs)
            )
            for fmt in ("json", "html")
        }
        base = statistics.median(
            _timed([sys.executable, "-c", _BASELINE, str(journal_path(data))]) for _ in range(runs)
        )
        html_kb = (Path(tmp) / "r.html").stat().st_size / 1024
    return {
        "bench": "report",
        "journal_rows": count,
        "days": SPAN.days,
        "runs": runs,
        "rows": [
            {
                "figure": f"report: infusiond report --format {fmt}, {count} rows (median)",
                "value": round(seconds, 3),
                "unit": "s",
                "baseline": round(base, 3),
                "ratio": round(seconds / base, 1) if base else None,
                "target": f"<= {TARGET_S:g} s",
                "met": seconds <= TARGET_S,
            }
            for fmt, seconds in times.items()
        ],
        "html_kb": round(html_kb, 1),
        "baseline": "raw sqlite3 read of every row + json.loads of each payload, own process",
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_bench")
    parser.add_argument("--quick", action="store_true", help="20,000 rows instead of 200,000")
    parser.add_argument("--rows", type=int, help="journal rows to generate")
    args = parser.parse_args()
    result = measure(quick=args.quick, rows=args.rows)
    print(json.dumps(result, indent=2))
    return 0 if all(r["met"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
