"""``python -m bench`` works end to end (quick subset), and its building blocks measure right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import table
from bench.harness import Daemon, modbus_sims, write_config
from bench.scale import window_quantile
from daemon.core.channel_types import refresh_phase
from daemon.core.poll_stats import LatenessHistogram
from tests.support.procs import Mosquitto

REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {"bench", "figure", "value", "unit", "baseline", "ratio", "target", "met"}


def test_quick_bench_prints_one_json_object_with_every_row_and_a_table() -> None:
    """``--quick --only check,command_rtt``: one JSON object on stdout (rows with value,
    baseline, ratio, target, met) and the human table on stderr. The command round trip runs
    through a real daemon, broker and simulator, interleaved with the raw gateway's on a
    second simulator; both p50s must be far below the ~88 ms Nagle stall, which guards
    TCP_NODELAY on the daemon's (and the baseline's) sockets end to end."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "check,command_rtt"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
        env=env,
    )
    report = json.loads(done.stdout)  # exactly one JSON document
    rows = report["rows"]
    assert [r["bench"] for r in rows] == ["check", *["command_rtt"] * 3]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert math.isfinite(row["value"])
        assert row["value"] > 0
        assert row["baseline"] > 0
        assert row["ratio"] > 0
        assert isinstance(row["met"], bool)
    assert report["all_met"] == all(r["met"] for r in rows)
    rtt = report["results"]["command_rtt"]
    assert rtt["phases"] == {"applied": rtt["commands"]}  # every timed command applied
    assert rtt["idle_ms"] == 100  # each command after 100 ms of idle
    assert rtt["raw"]["n"] == rtt["daemon"]["n"] == rtt["commands"]  # interleaved pairs
    assert rtt["back_to_back"]["daemon"]["n"] == rtt["back_to_back"]["commands"]
    assert rtt["daemon"]["p50_ms"] < 60.0  # Nagle would add >= 40 ms per hop; a busy disk ~15
    assert rtt["raw"]["p50_ms"] < 40.0  # the raw gateway's sockets too
    stderr = done.stderr.decode()
    assert "check: verdicts per second" in stderr
    assert "| met" in stderr


def test_unknown_benchmark_name_is_a_usage_error_naming_it() -> None:
    """``--only nope`` exits 2 and names the unknown benchmark and the known ones."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"nope" in done.stderr
    assert b"command_rtt" in done.stderr
    assert done.stdout == b""


def test_lateness_histogram_buckets_by_millisecond_and_caps(tmp_path: Path) -> None:
    """Lateness goes in 1 ms buckets; early polls count as 0 ms; huge ones in the last bucket;
    the dump is a complete JSON file (written by rename)."""
    hist = LatenessHistogram()
    for late in (-0.5, 0.0004, 0.0021, 0.0029, 99.0):
        hist.record(late)
    snap = hist.snapshot()
    assert (snap["total"], snap["ms"]) == (5, {"0": 2, "2": 2, "9999": 1})
    hist.dump(tmp_path / "stats.json")
    assert json.loads((tmp_path / "stats.json").read_text())["total"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_window_quantile_uses_only_the_polls_between_two_snapshots() -> None:
    """Old slow polls before the window do not count; the answer is a bucket's upper edge."""
    before = {"total": 100, "ms": {"500": 100}}
    after = {"total": 300, "ms": {"500": 100, "1": 198, "70": 2}}
    assert window_quantile(before, after, 0.5) == 2.0
    assert window_quantile(before, after, 0.99) == 2.0
    assert window_quantile(before, after, 1.0) == 71.0
    assert window_quantile(after, after, 0.99) is None


def test_table_has_one_line_per_row_and_flags_missed_targets() -> None:
    """The human table: a header, a rule, one line per figure; a missed target reads NO."""
    rows = [
        {"figure": "a", "value": 1.5, "unit": "ms", "baseline": 1.0, "ratio": 1.5,
         "target": "<= 3x", "met": True},
        {"figure": "b", "value": 9, "unit": "pumps", "baseline": None, "ratio": None,
         "target": ">= 10", "met": False},
    ]  # fmt: skip
    lines = table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].split("|")[-1].strip() == "yes"
    assert lines[3].split("|")[-1].strip() == "NO"


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc")
def test_daemon_dumps_poll_lateness_on_sigusr1_when_enabled(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A real ``infusiond run`` with INFUSIOND_BENCH_STATS writes its lateness histogram (one
    count per scheduled poll) to that file on SIGUSR1; the count grows as it polls. The dump also
    shows the start-up heap frozen out of garbage collection after READY=1."""
    with modbus_sims(1) as sims:
        config = write_config(
            tmp_path / "infusiond.toml",
            gateway_id="bench-smoke",
            broker_url=mosquitto.url,
            data_dir=tmp_path / "data",
            endpoints=sims.endpoints,
            period_s=0.1,
        )
        daemon = Daemon(config, tmp_path / "daemon", stats=True)
        try:
            daemon.wait_ready(timeout=30)
            first = daemon.poll_stats()
            deadline = time.monotonic() + 10
            later = daemon.poll_stats()
            while later["total"] < first["total"] + 3 and time.monotonic() < deadline:
                later = daemon.poll_stats()
        finally:
            daemon.close()
    assert later["total"] >= first["total"] + 3
    assert sum(later["ms"].values()) == later["total"]
    assert set(later["gc"]["pauses"]) == {"0", "1", "2"}  # collections are timed too
    assert later["gc"]["frozen"] > 10_000  # start-up objects frozen after READY=1


def test_refresh_phases_spread_a_ward_over_the_refresh_period() -> None:
    """Periodic state refreshes of 1000 pumps are spread over the period (no burst): each
    tenth of it gets 5-15% of the pumps, and a pump's phase is stable across restarts."""
    phases = [refresh_phase(f"pump-{i}") for i in range(1, 1001)]
    assert all(0 <= p < 1 for p in phases)
    per_tenth = [sum(1 for p in phases if k / 10 <= p < (k + 1) / 10) for k in range(10)]
    assert all(50 <= n <= 150 for n in per_tenth), per_tenth
    assert refresh_phase("pump-7") == phases[6]


def test_every_benchmark_of_make_bench_reports_rows_the_runner_can_table() -> None:
    """``hl7_out`` once returned no ``rows`` and ``make bench`` died with a KeyError at the end;
    its quick run now yields rows of the runner's shape (the others are covered above and by
    their own smoke tests)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "hl7_out"],
        cwd=REPO,
        capture_output=True,
        timeout=90,
        check=True,
        env=env,
    )
    rows = json.loads(done.stdout)["rows"]
    assert [r["bench"] for r in rows] == ["hl7_out", "hl7_out"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["met"], bool)
