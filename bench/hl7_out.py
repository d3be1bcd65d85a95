"""Bench ``hl7_out``: IHE PCD messages to the EHR simulator, and what HL7 out costs a titration.

Two measurements, on loopback, with the EHR simulator (``infusiond sim ehr``) and the pump
simulator in their own processes:

* ``messages_per_s``: IPEC messages journaled, sent one at a time and ACKed by the EHR
  simulator, end to end (events recorded in a real journal file -> follower -> ``hl7_outbox``
  -> MLLP -> AA -> settled). Context, not a target: each message costs two durable commits
  (stored, settled) and one round trip.
* ``titration``: MQTT command -> ``applied`` through ``infusiond run`` (set_dose alternating
  0.05 <-> 0.06 ug/kg/min), p50 and p99, first without ``[hl7_out]``, then with it pointed at
  the EHR simulator (every titration then also journals an IPEC and a DEC and sends them).
  Target: ``ratio_p50 = with / without <= 1.2``.

    python -m bench.hl7_out [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from bench.harness import Daemon, broker, modbus_sims, progress, stop_process, summary_ms
from bench.harness import write_config as write_daemon_config
from daemon.base.events import ChangeSource, RateChanged, RatePoint
from daemon.base.quantities import Quantity
from daemon.ihe.messages import Patient
from daemon.ihe.outbound import Hl7Out, Hl7OutSettings
from daemon.journal import AsyncJournal
from tests.support.procs import wait_for_line

GATEWAY = "bench-hl7"
PUMP = "pump-1"
TARGET_RATIO = 1.2
DOSES = (0.06, 0.05)
FINAL = frozenset({"applied", "rejected", "failed", "uncertain", "needs_confirmation"})
_LISTENING = re.compile(rb"listening on mllp://127\.0\.0\.1:(\d+)")


@contextlib.contextmanager
def ehr_sim() -> Iterator[int]:
    """``infusiond sim ehr`` in its own process on a port the OS picks; yields the port."""
    cmd = [sys.executable, "-m", "daemon.cli", "sim", "ehr", "--listen", "mllp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = wait_for_line(proc, b"listening on", 30, proc.stdout)
        found = _LISTENING.search(line)
        if found is None:
            raise RuntimeError(f"EHR simulator banner without its port: {line!r}")
        # its one line per message goes to a pipe nobody reads: keep it drained
        drain = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
        try:
            yield int(found.group(1))
        finally:
            proc.terminate()
            stop_process(drain)
    finally:
        stop_process(proc)


def _event(i: int) -> RateChanged:
    return RateChanged(
        RatePoint(Quantity.rate(52.5), None),
        RatePoint(Quantity.rate(63.0), None),
        ChangeSource.COMMAND,
        f"bench-{i}",
    )


async def _throughput(port: int, n: int, data_dir: Path) -> dict[str, Any]:
    async with await AsyncJournal.open(data_dir, gateway_id=GATEWAY) as journal:
        out = Hl7Out(
            Hl7OutSettings(host="127.0.0.1", port=port, dec_period_s=3600),
            journal,
            clock=lambda: datetime.now(UTC),
            patient_of=lambda bed: Patient(bed or "bed-1"),
        )
        await out.prepare()
        task = asyncio.create_task(out.run(), name="bench-hl7-out")
        try:
            await out.connected.wait()
            t0 = time.perf_counter()
            for start in range(0, n, 50):
                await journal.record_events(
                    PUMP, [_event(i) for i in range(start, min(n, start + 50))]
                )
            while out.stats.acked < n:
                await asyncio.sleep(0.01)  # a bench's progress check, not synchronisation
            elapsed = time.perf_counter() - t0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return {"messages": n, "seconds": round(elapsed, 3), "messages_per_s": round(n / elapsed, 1)}


def _command(command_id: str, dose: float) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "id": command_id,
            "issued_at": now,
            "ttl_s": 30,
            "by": {"clinician": "bench"},
            "action": "set_dose",
            "dose": {"value": dose, "unit": "ug/kg/min"},
        }
    ).encode()


async def _titrations(port: int, n: int, tag: str) -> list[float]:
    topic = f"infusiond/{GATEWAY}/pump/{PUMP}/command"
    samples: list[float] = []
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"bench-hl7-{tag}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"{topic}/result", qos=1)
        results = client.messages
        doses = itertools.cycle(DOSES)
        for i in range(n + 5):  # 5 warm-up
            command_id = f"{tag}-{time.time_ns()}-{i}"
            t0 = time.perf_counter()
            await client.publish(topic, _command(command_id, next(doses)), qos=1)
            while True:
                body = json.loads((await anext(results)).payload)["data"]
                if body.get("id") == command_id and body["phase"] in FINAL:
                    break
            if body["phase"] != "applied":
                raise RuntimeError(f"titration {command_id} ended {body['phase']}")
            if i >= 5:
                samples.append(time.perf_counter() - t0)
    return samples


def _titration_run(work: Path, n: int, hl7_port: int | None, tag: str) -> list[float]:
    with broker(work / tag) as mqtt, modbus_sims(1) as sims:
        config = write_daemon_config(
            work / f"{tag}.toml",
            gateway_id=GATEWAY,
            broker_url=mqtt.url,
            data_dir=work / tag / "data",
            endpoints=sims.endpoints[:1],
            control=True,
        )
        if hl7_port is not None:
            with config.open("a", encoding="utf-8") as f:
                f.write(f'[hl7_out]\nurl = "mllp://127.0.0.1:{hl7_port}"\ndec_period_s = 60\n')
        daemon = Daemon(config, work / tag / "daemon")
        try:
            daemon.wait_ready()
            return asyncio.run(_titrations(mqtt.port, n, tag))
        finally:
            daemon.close()


def measure(*, quick: bool = False) -> dict[str, Any]:
    messages = 200 if quick else 2000
    titrations = 30 if quick else 200
    with tempfile.TemporaryDirectory(prefix="bench-hl7-") as tmp:
        work = Path(tmp)
        with ehr_sim() as port:
            progress(f"hl7_out: {messages} messages to the EHR simulator")
            throughput = asyncio.run(_throughput(port, messages, work / "journal"))
            progress(f"hl7_out: {titrations} titrations without, then with [hl7_out]")
            without = summary_ms(_titration_run(work, titrations, None, "without"))
            with_hl7 = summary_ms(_titration_run(work, titrations, port, "with"))
    ratio = with_hl7["p50_ms"] / without["p50_ms"]
    return {
        "bench": "hl7_out",
        "throughput": throughput,
        "titration_ms": {"without_hl7_out": without, "with_hl7_out": with_hl7},
        "ratio_p50": round(ratio, 3),
        "ratio_p99": round(with_hl7["p99_ms"] / without["p99_ms"], 3),
        "target_ratio_p50": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
        "rows": [
            {
                "figure": "hl7_out: titration p50 with [hl7_out] vs without",
                "value": with_hl7["p50_ms"],
                "unit": "ms",
                "baseline": without["p50_ms"],
                "ratio": round(ratio, 2),
                "target": f"<= {TARGET_RATIO:g}x",
                "met": ratio <= TARGET_RATIO,
            },
            {
                "figure": "hl7_out: messages to the EHR simulator",
                "value": throughput["messages_per_s"],
                "unit": "msg/s",
                "baseline": None,
                "ratio": None,
                "target": "-",
                "met": True,
            },
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
