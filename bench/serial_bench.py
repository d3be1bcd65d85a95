"""Bench `serial`: each serial vendor's transaction time vs the wire time of its bytes.

For each vendor (New Era, then Harvard Apparatus PHD ULTRA) the simulator runs in its own process
on one end of a socat pty pair (``--emulate-wire``: it paces each reply by the time its command
and reply bytes take at the baud rate, as a real RS-232 line does), then times, side by side on
the other end:

* ``driver``: the vendor line's ``transact`` (shared line lock, framing, reply checks) of a rate
  query (New Era ``RAT``, PHD ``irate``);
* ``raw``: the same bytes written and read back with plain pyserial-asyncio-fast.

Prints one JSON object: the New Era figures at the top level (as before) and the PHD ones under
``phd``; ``ratio_driver_vs_wire`` (median) is the figure with a 1.5 target, one row per vendor.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import serial_asyncio_fast
import structlog

from drivers.newera.frames import Command, Reply, Status, encode_command, encode_reply
from drivers.newera.port import NewEraPort
from drivers.phd.grammar import Command as PhdCommand
from drivers.phd.grammar import Prompt
from drivers.phd.grammar import Reply as PhdReply
from drivers.phd.line import PhdLine
from tests.support.procs import wait_for_line

TARGET_RATIO = 1.5


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def _time_driver(n: int, transact: Callable[[], Awaitable[object]]) -> list[float]:
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await transact()
        samples.append(time.perf_counter() - t0)
    return samples


async def _time_raw(path: str, n: int, baud: int, request: bytes, end: bytes) -> list[float]:
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        loop=asyncio.get_running_loop(), url=path, baudrate=baud
    )
    raw: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        await reader.readuntil(end)
        raw.append(time.perf_counter() - t0)
    writer.close()
    return raw


async def _measure(vendor: str, path: str, n: int, baud: int) -> dict[str, Any]:
    if vendor == "newera":
        command = Command("RAT", "", 0)
        request = encode_command(command, safe=False)
        reply = encode_reply(Reply(0, Status.INFUSING, "9.000MH"), safe=False)
        port = NewEraPort(path, baudrate=baud, timeout_s=1.0)
        driver = await _time_driver(n, lambda: port.transact(command, safe=False))
        await port.close()
        end, what = b"\x03", "New Era transaction (RAT"
    else:
        phd_command = PhdCommand("irate", "", 0)
        request = phd_command.encode()
        reply = PhdReply(0, Prompt.INFUSING, ("9 ml/hr",)).encode()
        line = PhdLine(path, baudrate=baud, timeout_s=1.0)
        driver = await _time_driver(n, lambda: line.transact(phd_command))
        await line.close()
        end, what = b">", "PHD ULTRA transaction (irate"
    wire_bytes = len(request) + len(reply)
    wire_s = wire_bytes * 10 / baud  # 8N1: 10 bits per byte
    raw = await _time_raw(path, n, baud, request, end)
    d, r = _stats(driver), _stats(raw)
    return {
        "bench": "serial",
        "vendor": vendor,
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
                "figure": f"serial: {what}, {baud} baud, p50)",
                "value": d["p50_ms"],
                "unit": "ms",
                "baseline": round(wire_s * 1000, 3),
                "ratio": round(d["p50_ms"] / (wire_s * 1000), 3),
                "target": f"<= {TARGET_RATIO:g}x",
                "met": d["p50_ms"] / (wire_s * 1000) <= TARGET_RATIO,
            }
        ],
    }


def _simulator(vendor: str, tty: Path, baud: int, *, emulate_wire: bool) -> list[str]:
    cmd = [sys.executable, "-m", "daemon.cli", "sim", vendor, "--serial", str(tty)]
    cmd += ["--baud", str(baud), "--rate", "9", "--running"]
    if vendor == "newera":
        cmd.append("--no-reset-alarm")
    if emulate_wire:
        cmd.append("--emulate-wire")
    return cmd


def _measure_vendor(vendor: str, count: int, baud: int, *, emulate_wire: bool) -> dict[str, Any]:
    """Start socat and the vendor's simulator process, time both paths, stop them."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "tty-a", Path(tmp) / "tty-b"
        socat = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sim: subprocess.Popen[bytes] | None = None
        try:
            assert socat.stderr is not None
            wait_for_line(socat, b"starting data transfer loop", 10)
            sim = subprocess.Popen(
                _simulator(vendor, a, baud, emulate_wire=emulate_wire),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert sim.stdout is not None
            wait_for_line(sim, b"serving", 20, sim.stdout)
            result = asyncio.run(_measure(vendor, str(b), count, baud))
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


def measure(
    *, quick: bool = False, n: int | None = None, baud: int = 19200, emulate_wire: bool = True
) -> dict[str, Any]:
    """New Era (top level, as before) and PHD ULTRA (``phd``), one row each."""
    count = n if n is not None else (40 if quick else 200)
    result = _measure_vendor("newera", count, baud, emulate_wire=emulate_wire)
    phd = _measure_vendor("phd", count, baud, emulate_wire=emulate_wire)
    result["rows"] = result["rows"] + phd.pop("rows")
    result["phd"] = phd
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
