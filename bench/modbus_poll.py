"""Benchmark: driver poll cycle per pump vs a raw pymodbus read of the same registers.

The simulator runs in its own process (`infusiond sim modbus`) on loopback. Both sides are
measured in the same run in small alternating chunks (so load on a shared machine hits
both alike), and the medians of the chunk averages compared. Prints JSON:

    python -m bench.modbus_poll [--polls 25] [--rounds 60]

Target (docs/performance.md): ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus import BusRegistry, ModbusPumpDriver

TARGET_RATIO = 1.3


def _start_simulator() -> tuple[subprocess.Popen[bytes], int]:
    """A simulator process on a port the OS picks; the port is read from its banner."""
    sim_args = ["--status", "infusing", "--rate", "52.5"]
    cmd = [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--listen", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen([*cmd, *sim_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the banner: printed once the port is bound
    found = re.match(rb"serving \S+ on tcp://127\.0\.0\.1:(\d+) ", line)
    if found is None:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, int(found.group(1))


async def _measure(port: int, polls: int, rounds: int) -> dict[str, Any]:
    driver = ModbusPumpDriver(f"tcp://127.0.0.1:{port}", 1, registry=BusRegistry())
    await driver.connect()
    raw = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await raw.connect()
    span = driver.status_plan[0]
    raw_times: list[float] = []
    drv_times: list[float] = []
    try:
        for _ in range(50):  # warm-up both paths
            await raw.read_holding_registers(span.address, count=span.count, device_id=1)
            await driver.read_status()
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(polls):
                await raw.read_holding_registers(span.address, count=span.count, device_id=1)
            t1 = time.perf_counter()
            for _ in range(polls):
                status = await driver.read_status()
            t2 = time.perf_counter()
            raw_times.append((t1 - t0) / polls)
            drv_times.append((t2 - t1) / polls)
        assert status.rate_ml_h == Decimal("52.50")
    finally:
        raw.close()
        await driver.close()
    raw_s, drv_s = statistics.median(raw_times), statistics.median(drv_times)
    return {
        "bench": "modbus_poll",
        "requests_per_poll": len(driver.status_plan),
        "registers": span.count,
        "polls_per_round": polls,
        "rounds": rounds,
        "raw_read_us": round(raw_s * 1e6, 1),
        "driver_poll_us": round(drv_s * 1e6, 1),
        "ratio": round(drv_s / raw_s, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": drv_s / raw_s <= TARGET_RATIO,
        "rows": [
            {
                "figure": "modbus_poll: poll cycle per pump",
                "value": round(drv_s * 1e6, 1),
                "unit": "us",
                "baseline": round(raw_s * 1e6, 1),
                "ratio": round(drv_s / raw_s, 3),
                "target": f"<= {TARGET_RATIO:g}x",
                "met": drv_s / raw_s <= TARGET_RATIO,
            }
        ],
    }


def measure(*, quick: bool = False, polls: int = 25, rounds: int | None = None) -> dict[str, Any]:
    """Start a simulator process, time both paths side by side, stop it."""
    proc, port = _start_simulator()
    try:
        return asyncio.run(_measure(port, polls, rounds or (15 if quick else 60)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--polls", type=int, default=25, help="polls per chunk")
    parser.add_argument("--rounds", type=int, default=60, help="alternating chunks")
    args = parser.parse_args()
    print(json.dumps(measure(polls=args.polls, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
