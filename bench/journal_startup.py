"""Bench ``journal_startup``: start-up cost of a big journal (targets: <= 2 s, <= 150 MB RSS).

A journal of 1,000,000 event rows (a valid hash chain over 30 days, 8 pumps; 100,000 rows with
``--quick``) is generated in one transaction, then measured two ways:

(a) *open + state queries*, in a fresh process: ``AsyncJournal.open`` and, for each of the 8
    pumps, what a restart rebuilds the pump from (``latest_events`` of the five state event
    types, ``recent_events`` of the last 4 h, and ``interrupted_commands``), then close. The
    baseline, measured in the same run on the same file, is a raw ``sqlite3.connect`` plus ONE
    indexed SELECT (the newest rate change of one pump): the floor of touching the file at all.
    Peak RSS of that process (``VmHWM``) is reported too.
(b) *daemon to READY*: ``infusiond run --config`` with those 8 pumps (simulators in their own
    process, a private mosquitto) and the big journal, from spawn to ``READY=1`` on a notify
    socket, and its peak RSS (``VmHWM`` read at READY). The baseline is the same daemon and
    pumps with an empty journal. Figure (b) depends on the gateway reading its state through
    the indexed queries (not by loading every event row of each pump).

The OS page cache is warm for both (the file was just written): this measures the work done,
not the disk's seek time.

    python -m bench.journal_startup [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
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

from bench.harness import Daemon, broker, modbus_sims, progress, write_config
from daemon.base.envelope import encode
from daemon.base.events import (
    Alarm,
    AlarmCleared,
    AlarmRaised,
    ChangeSource,
    ConnectionChanged,
    Priority,
    PumpEvent,
    RateChanged,
    RatePoint,
)
from daemon.base.paths import journal_path
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity
from daemon.base.timefmt import format_ts, parse_ts
from daemon.journal import GENESIS_HASH, AsyncJournal, Journal
from drivers.base import ConnectionState

ROWS_FULL = 1_000_000
ROWS_QUICK = 100_000
PUMPS = 8
STATE_TYPES = (
    "program_changed",
    "rate_changed",
    "connection_changed",
    "alarm_raised",
    "alarm_cleared",
)
# a bedside's mix: mostly rate changes and alarms, a program change now and then
_MIX = ("rate_changed",) * 6 + ("alarm_raised", "alarm_cleared", "connection_changed")
HISTORY_WINDOW = timedelta(hours=4)
HISTORY_LIMIT = 64
SPAN = timedelta(days=30)
TARGET_S = 2.0
TARGET_RSS_MB = 150.0
RUNS = 5
_BATCH = 50_000


#: the bench daemon's pumps (bench.harness.PUMP_PROGRAM) as a program_changed carries them
_PROGRAM = {
    "drug": "norepinephrine",
    "concentration": {"value": 4.0, "unit": "ug/mL"},
    "dose_unit": "ug/kg/min",
    "diluent": "D5W",
    "route": "central",
    "profile": "adult-icu",
    "weight_kg": 70.0,
    "line_shares": [],
    "bed": None,
    "baseline_sbp": None,
    "chronic_hypertension": False,
}


def _event(event_type: str, n: int, at: datetime) -> PumpEvent:
    """A real event of ``event_type`` (as the daemon journals it), its rate varying with ``n``."""
    rate = Quantity.rate(n % 500)
    if event_type == "rate_changed":
        before = RatePoint(Quantity.rate((n + 1) % 500), None)
        return RateChanged(before, RatePoint(rate, None), ChangeSource.DEVICE)
    if event_type in ("alarm_raised", "alarm_cleared"):
        alarm = Alarm("occlusion", Priority.HIGH, at)
        return AlarmRaised(alarm) if event_type == "alarm_raised" else AlarmCleared(alarm)
    if event_type == "connection_changed":
        return ConnectionChanged(ConnectionState.ONLINE, ConnectionState.OFFLINE, rate=rate)
    raise ValueError(f"no generator for {event_type}")


def _event_rows(count: int, end: datetime) -> Iterator[tuple[Any, ...]]:
    """``count`` chained EVENT rows (as ``Journal.record_event`` writes them) ending at ``end``."""
    prev = GENESIS_HASH
    step = SPAN / count
    start = end - SPAN
    for n in range(1, count + 1):
        pump_id = f"pump-{(n - 1) % PUMPS + 1}"
        event_type = "program_changed" if n % 5000 < PUMPS else _MIX[(n // PUMPS) % len(_MIX)]
        at = start + step * n
        if event_type == "program_changed":  # what the gate journals: the whole program
            data: JsonObject = {"type": event_type, "pump_id": pump_id, "command_id": f"c-{n}"}
            data["program"] = _PROGRAM
        else:
            data = _event(event_type, n, at).journaled(pump_id)
        ts = format_ts(at)
        payload = encode({"seq": n, "event": data}).decode()
        canonical = json.dumps(
            [n, ts, "event", pump_id, payload], separators=(",", ":"), ensure_ascii=False
        ).encode()
        digest = hashlib.sha256(prev.encode("ascii") + canonical).hexdigest()
        yield (n, ts, "event", pump_id, payload, prev, digest, event_type)
        prev = digest


def build_journal(data_dir: Path, rows: int, *, end: datetime) -> None:
    """A valid journal of ``rows`` events in ``data_dir``: schema from ``Journal.open``, rows
    inserted in one transaction (as if every event had been published: empty outbox)."""
    Journal.open(data_dir, gateway_id="bench").close()
    conn = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        source = _event_rows(rows, end)
        last: tuple[Any, ...] | None = None
        while batch := [row for _, row in zip(range(_BATCH), source, strict=False)]:
            conn.executemany(
                "INSERT INTO journal (n, ts, kind, pump_id, payload, prev_hash, hash, event_type)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
            last = batch[-1]
        assert last is not None
        conn.executemany(
            "UPDATE meta SET value=? WHERE key=?",
            [(str(rows), "seq"), (str(rows), "head_n"), (last[6], "head_hash")],
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _state_queries(data_dir: Path, now: datetime) -> dict[str, Any]:
    journal = await AsyncJournal.open(data_dir, gateway_id="bench")
    try:
        latest = 0
        recent = 0
        for k in range(1, PUMPS + 1):
            latest += len(await journal.run(Journal.latest_events, f"pump-{k}", STATE_TYPES))
            recent += len(
                await journal.run(
                    Journal.recent_events,
                    f"pump-{k}",
                    ["rate_changed"],
                    since=now - HISTORY_WINDOW,
                    limit=HISTORY_LIMIT,
                )
            )
        interrupted = len(await journal.run(Journal.interrupted_commands))
    finally:
        await journal.aclose()
    return {"latest": latest, "recent": recent, "interrupted": interrupted}


def probe(data_dir: Path, now: datetime) -> dict[str, Any]:
    """Run in a fresh process: (a) and its baseline, timed; then this process's peak RSS."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(journal_path(data_dir))
    conn.execute(
        "SELECT payload FROM journal WHERE pump_id = ? AND event_type = ? ORDER BY n DESC LIMIT 1",
        ("pump-1", "rate_changed"),
    ).fetchone()
    conn.close()
    baseline = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = asyncio.run(_state_queries(data_dir, now))
    elapsed = time.perf_counter() - t0
    return {
        "open_and_query_s": elapsed,
        "baseline_s": baseline,
        **found,
        "vmhwm_kb": _peak_rss_kb(),
    }


def _run_probe(data_dir: Path, now: datetime) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.journal_startup", "--probe", str(data_dir), format_ts(now)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _daemon_ready(config: Path, workdir: Path) -> tuple[float | None, int | None]:
    """Seconds from spawn to READY=1 and VmHWM (KB) at READY; (None, None) if never ready."""
    daemon = Daemon(config, workdir)
    try:
        ready = daemon.wait_ready(timeout=90)
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        hwm = next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmHWM:")
    except RuntimeError as exc:
        progress(f"journal_startup: daemon not ready: {str(exc)[:400]}")
        return None, None
    finally:
        daemon.close()
    return ready, hwm


def _row(
    figure: str, value: float | None, unit: str, baseline: float | None, target: float
) -> dict[str, Any]:
    ratio = round(value / baseline, 1) if value is not None and baseline else None
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": f"<= {target:g} {unit}",
        "met": value is not None and value <= target,
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    rows = ROWS_QUICK if quick else ROWS_FULL
    runs = 2 if quick else RUNS
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        work = Path(tmp)
        big = work / "big"
        t0 = time.monotonic()
        build_journal(big, rows, end=now)
        size_mb = journal_path(big).stat().st_size / 1e6
        progress(
            f"journal_startup: {rows} rows ({'quick mode, ' if quick else ''}{size_mb:.0f} MB)"
            f" generated in {time.monotonic() - t0:.1f} s"
        )
        probes = [_run_probe(big, now) for _ in range(runs)]
        query_s = statistics.median(p["open_and_query_s"] for p in probes)
        raw_s = statistics.median(p["baseline_s"] for p in probes)
        probe_rss_mb = max(p["vmhwm_kb"] for p in probes) / 1024
        progress(f"journal_startup: open + state queries {query_s * 1000:.1f} ms")
        with broker(work) as mqtt, modbus_sims(PUMPS) as sims:
            results: dict[str, tuple[float | None, int | None]] = {}
            for name, data_dir in (("empty", work / "empty"), ("big", big)):
                run_dir = work / f"run-{name}"
                run_dir.mkdir()
                config = write_config(
                    run_dir / "infusiond.toml",
                    gateway_id="bench-journal",
                    broker_url=mqtt.url,
                    data_dir=data_dir,
                    endpoints=sims.endpoints,
                )
                results[name] = _daemon_ready(config, run_dir)
                progress(f"journal_startup: daemon with {name} journal -> {results[name]}")
    (empty_s, empty_kb), (big_s, big_kb) = results["empty"], results["big"]
    mb = 1024.0
    return {
        "bench": "journal_startup",
        "quick": quick,
        "rows": [
            _row(
                f"journal_startup: open + state queries, {PUMPS} pumps, {rows} rows (median)",
                round(query_s * 1000, 2),
                "ms",
                round(raw_s * 1000, 3),
                TARGET_S * 1000,
            ),
            _row(
                f"journal_startup: peak RSS of that process, {rows} rows",
                round(probe_rss_mb, 1),
                "MB",
                None,
                TARGET_RSS_MB,
            ),
            _row(
                f"journal_startup: infusiond run -> READY=1, {PUMPS} pumps, {rows} rows",
                round(big_s, 3) if big_s is not None else None,
                "s",
                round(empty_s, 3) if empty_s is not None else None,
                TARGET_S,
            ),
            _row(
                f"journal_startup: infusiond peak RSS at READY, {rows} rows",
                round(big_kb / mb, 1) if big_kb is not None else None,
                "MB",
                round(empty_kb / mb, 1) if empty_kb is not None else None,
                TARGET_RSS_MB,
            ),
        ],
        "journal_rows": rows,
        "journal_mb": round(size_mb, 1),
        "runs": runs,
        "probes": probes,
        "note": ("quick mode: 100,000 rows instead of 1,000,000" if quick else "1,000,000 rows")
        + "; baselines: raw sqlite3 open + one indexed SELECT (a), the daemon with an empty"
        " journal (b)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--probe", nargs=2, metavar=("DATA_DIR", "NOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        data_dir, now = args.probe
        print(json.dumps(probe(Path(data_dir), parse_ts(now))))
        return 0
    print(json.dumps(measure(quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
