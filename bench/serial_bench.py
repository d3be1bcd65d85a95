"""Bench `serial`: New Era transaction time vs the wire time of its bytes (DESIGN.md section 9).

Runs the simulator in its own process on one end of a socat pty pair (``--emulate-wire``: it
paces each reply by the time its command and reply bytes take at the baud rate, as a real
RS-232 line does), then times, side by side on the other end:

* ``driver``: ``NewEraPort.transact`` (locking, framing, reply checks) of a ``RAT`` query;
* ``raw``: the same bytes written and read back with plain pyserial-asyncio-fast.

Prints one JSON object; ``ratio_driver_vs_wire`` (median) is the figure with a 1.5 target.
Usage: ``python bench/serial_bench.py [--n 200] [--baud 19200] [--no-emulate-wire]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import serial_asyncio_fast
import structlog

from drivers.newera.frames import Command, Reply, Status, encode_command, encode_reply
from drivers.newera.port import NewEraPort
from tests.support.procs import wait_for_line

TARGET_RATIO = 1.5


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def _measure(path: str, n: int, baud: int) -> dict[str, Any]:
    command = Command("RAT", "", 0)
    wire_bytes = len(encode_command(command, safe=False)) + len(
        encode_reply(Reply(0, Status.INFUSING, "9.000MH"), safe=False)
    )
    wire_s = wire_bytes * 10 / baud  # 8N1: 10 bits per byte

    port = NewEraPort(path, baudrate=baud, timeout_s=1.0)
    driver: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await port.transact(command, safe=False)
        driver.append(time.perf_counter() - t0)
    await port.close()

    reader, writer = await serial_asyncio_fast.open_serial_connection(
        loop=asyncio.get_running_loop(), url=path, baudrate=baud
    )
    raw: list[float] = []
    request = encode_command(command, safe=False)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        await reader.readuntil(b"\x03")
        raw.append(time.perf_counter() - t0)
    writer.close()

    d, r = _stats(driver), _stats(raw)
    return {
        "bench": "serial",
        "transactions": n,
        "baud": baud,
        "bytes_per_transaction": wire_bytes,
        "wire_ms": round(wire_s * 1000, 3),
        "driver": d,
        "raw": r,
        "ratio_driver_vs_wire": round(d["p50_ms"] / (wire_s * 1000), 3),
        "ratio_raw_vs_wire": round(r["p50_ms"] / (wire_s * 1000), 3),
        "ratio_driver_vs_raw": round(d["p50_ms"] / r["p50_ms"], 3),
        "target_ratio_vs_wire": TARGET_RATIO,
        "rows": [
            {
                "figure": f"serial: New Era transaction (RAT, {baud} baud, p50)",
                "value": d["p50_ms"],
                "unit": "ms",
                "baseline": round(wire_s * 1000, 3),
                "ratio": round(d["p50_ms"] / (wire_s * 1000), 3),
                "target": f"<= {TARGET_RATIO:g}x",
                "met": d["p50_ms"] / (wire_s * 1000) <= TARGET_RATIO,
            }
        ],
    }


def measure(
    *, quick: bool = False, n: int | None = None, baud: int = 19200, emulate_wire: bool = True
) -> dict[str, Any]:
    """Start socat and the simulator process, time both paths, stop them."""
    count = n if n is not None else (40 if quick else 200)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "tty-a", Path(tmp) / "tty-b"
        socat = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sim_cmd = [sys.executable, "-m", "daemon.cli", "sim", "newera", "--serial", str(a)]
        sim_cmd += ["--baud", str(baud), "--rate", "9", "--running", "--no-reset-alarm"]
        if emulate_wire:
            sim_cmd.append("--emulate-wire")
        sim: subprocess.Popen[bytes] | None = None
        try:
            assert socat.stderr is not None
            wait_for_line(socat, b"starting data transfer loop", 10)
            sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert sim.stdout is not None
            wait_for_line(sim, b"serving", 20, sim.stdout)
            result = asyncio.run(_measure(str(b), count, baud))
            result["emulated_wire"] = emulate_wire
        finally:
            for proc in (sim, socat):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
                    for stream in (proc.stdout, proc.stderr):
                        if stream is not None:
                            stream.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--no-emulate-wire", action="store_true")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # JSON on stdout
    result = measure(n=args.n, baud=args.baud, emulate_wire=not args.no_emulate_wire)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
