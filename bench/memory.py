"""Bench ``memory``: RSS of the daemon with 16 pumps, and per added pump (16 vs 64 pumps).

Targets: <= 80 MB with 16 pumps, <= 100 KB per added pump. RSS is read from
``/proc/<pid>/statm`` after READY=1 and a few poll periods of steady state (several state
publishes and at least one periodic refresh), so lazily built caches are included.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Daemon, broker, modbus_sims, progress, sample, write_config

SMALL, LARGE = 16, 64
TARGET_MB = 80.0
TARGET_PER_PUMP_KB = 100.0


def _rss_kb(mqtt_url: str, endpoints: list[tuple[str, int]], work: Path, settle_s: float) -> int:
    config = write_config(
        work / "infusiond.toml",
        gateway_id="bench-memory",
        broker_url=mqtt_url,
        data_dir=work / "data",
        endpoints=endpoints,
    )
    daemon = Daemon(config, work)
    try:
        daemon.wait_ready()
        end = time.monotonic() + settle_s
        peak = 0
        while time.monotonic() < end:  # sample RSS once a second over the window: keep the peak
            peak = max(peak, sample(daemon.pid).rss_kb)
            time.sleep(1.0)
        return peak
    finally:
        daemon.close()


def measure(*, quick: bool = False) -> dict[str, Any]:
    settle = 4.0 if quick else 12.0
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        with broker(work) as mqtt, modbus_sims(LARGE) as sims:
            small_dir, large_dir = work / "small", work / "large"
            small_dir.mkdir()
            large_dir.mkdir()
            small = _rss_kb(mqtt.url, sims.endpoints[:SMALL], small_dir, settle)
            progress(f"memory: {SMALL} pumps -> RSS {small / 1024:.1f} MB")
            large = _rss_kb(mqtt.url, sims.endpoints, large_dir, settle)
            progress(f"memory: {LARGE} pumps -> RSS {large / 1024:.1f} MB")
    per_pump = (large - small) / (LARGE - SMALL)
    return {
        "bench": "memory",
        "settle_s": settle,
        "rss_kb": {str(SMALL): small, str(LARGE): large},
        "rows": [
            {
                "figure": f"memory: daemon RSS with {SMALL} pumps",
                "value": round(small / 1024, 1),
                "unit": "MB",
                "baseline": None,
                "ratio": None,
                "target": f"<= {TARGET_MB:g} MB",
                "met": small / 1024 <= TARGET_MB,
            },
            {
                "figure": f"memory: RSS per added pump ({SMALL} -> {LARGE})",
                "value": round(per_pump, 1),
                "unit": "KB",
                "baseline": None,
                "ratio": None,
                "target": f"<= {TARGET_PER_PUMP_KB:g} KB",
                "met": per_pump <= TARGET_PER_PUMP_KB,
            },
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(measure(quick=parser.parse_args().quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
