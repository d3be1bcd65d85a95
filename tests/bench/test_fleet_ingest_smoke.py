"""``bench/fleet_ingest.py`` at toy size: two bridged mosquittos, a private PostgreSQL, the
real collector killed with -9 and restarted mid-run, and the figures it prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOY = ("--gateways", "3", "--pumps", "2", "--rate", "150", "--seconds", "3", "--drain", "1500")


@pytest.mark.slow
def test_toy_fleet_ingest_stores_every_event_once_and_prints_its_figures() -> None:
    """3 gateways x 2 pumps at 150 ev/s for 3 s, then 1500 events pre-loaded and drained by one
    collector and again by two in a group: every published event stored once with its bytes
    (0 lost, 0 duplicated, 0 altered) across the kill and the drains; capacity, ingest,
    catch-up, COPY and lag figures are finite and the JSON carries the eight rows of
    ``python -m bench``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.fleet_ingest", *TOY],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.stdout, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    assert result["published"] == 450
    assert result["events"] == 453 + 2 * 1500  # one warm-up event per gateway, two drains
    for key in ("drain_1", "drain_2"):
        assert result[key]["events"] == 1500
        assert result[key]["eps"] > 0
        assert result[key]["commits"] >= 3  # batches of at most 500
    assert result["raw_subscriber"]["eps"] > 0
    assert result["mosquitto_sub"]["eps"] > 0
    assert (result["lost"], result["duplicated"], result["altered"]) == (0, 0, 0)
    assert 0 < result["ingest_eps"] <= 1.1 * 150
    assert result["copy_eps"] > result["ingest_eps"]
    assert result["lag_events"] > 0
    assert 0 < result["lag_p50_ms"] <= result["lag_p99_ms"] <= result["lag_max_ms"]
    assert math.isfinite(result["ratio"])
    assert [r["figure"].split(":")[0] for r in result["rows"]] == ["fleet ingest"] * 8
    assert result["rows"][-1]["met"] is True
    assert "load_avg" in result


def test_bad_sizes_are_usage_errors_naming_the_option() -> None:
    """--gateways 0 (or any size <= 0) exits 2 naming the option; nothing is started."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.fleet_ingest", "--gateways", "0"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2
    assert b"--gateways: must be > 0" in done.stderr
