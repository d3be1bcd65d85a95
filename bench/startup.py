"""Bench ``startup``: process start to ``READY=1`` with 16 pumps (target <= 1.5 s).

The daemon is spawned as ``infusiond run --config`` with ``NOTIFY_SOCKET`` pointing at a socket
the bench listens on, exactly as systemd does; READY=1 comes after the first poll of every pump
(docs/operator-guide.md). For context the bench also times a bare interpreter start and the
import of the daemon's modules, which are part of the figure.

    python -m bench.startup [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Daemon, broker, modbus_sims, progress, write_config

PUMPS = 16
TARGET_S = 1.5


def _time_cmd(args: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - t0


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Median time to READY=1 over a few cold starts (each with a fresh journal)."""
    runs = 2 if quick else 5
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        with broker(work) as mqtt, modbus_sims(PUMPS) as sims:
            for i in range(runs):
                run_dir = work / f"run-{i}"
                run_dir.mkdir()
                config = write_config(
                    run_dir / "infusiond.toml",
                    gateway_id="bench-startup",
                    broker_url=mqtt.url,
                    data_dir=run_dir / "data",
                    endpoints=sims.endpoints,
                )
                daemon = Daemon(config, run_dir)
                try:
                    times.append(daemon.wait_ready())
                finally:
                    daemon.close()
                progress(f"startup run {i + 1}/{runs}: READY=1 after {times[-1]:.3f} s")
    interpreter = _time_cmd([sys.executable, "-c", "pass"])
    imports = _time_cmd([sys.executable, "-c", "import daemon.cli.service, daemon.core.gateway"])
    ready = statistics.median(times)
    return {
        "bench": "startup",
        "pumps": PUMPS,
        "runs": runs,
        "ready_s": [round(t, 3) for t in times],
        "interpreter_start_s": round(interpreter, 3),
        "interpreter_and_imports_s": round(imports, 3),
        "rows": [
            {
                "figure": "startup: spawn -> READY=1, 16 pumps (median)",
                "value": round(ready, 3),
                "unit": "s",
                "baseline": None,
                "ratio": None,
                "target": f"<= {TARGET_S} s",
                "met": ready <= TARGET_S,
            }
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(measure(quick=parser.parse_args().quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
