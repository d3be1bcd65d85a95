"""Bench ``command_rtt``: MQTT command -> ``applied`` through the daemon, p50 and p99.

Baseline, measured in the same run and interleaved sample by sample with the daemon path:

* ``mqtt_echo``: a QoS 1 publish from client A, re-published QoS 1 by client B, received by A
  (two plain aiomqtt clients with TCP_NODELAY on the same broker);
* ``modbus_write_read``: a raw pymodbus write of one holding register plus a read of the status
  block, on the same simulator process (another unit id).

For context (not part of the baseline) it also times ``journal_commit``: one durable SQLite commit
through :class:`daemon.journal.AsyncJournal` on the same disk; the daemon's path has two
(claim + verdict + ``accepted``, then the events + ``applied``: docs/performance.md).

``baseline = mqtt_echo + modbus_write_read`` (p50 with p50, p99 with p99). The daemon runs as
``infusiond run --config`` with remote control on and an allowlist; commands are sent one at a
time (a pump takes one command at a time) and alternate 0.05 <-> 0.06 ug/kg/min of
norepinephrine (within the library's soft range: accepted without confirmation).
Targets: ratio <= 3 (p50 and p99) and p50 <= 20 ms.

    python -m bench.command_rtt [--quick] [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from bench.harness import Daemon, broker, modbus_sims, progress, summary_ms, write_config
from daemon.journal import AsyncJournal, JournalKind
from drivers.modbus.regmap import load_profile

GATEWAY = "bench-rtt"
PUMP = "pump-1"
TARGET_RATIO = 3.0
TARGET_P50_MS = 20.0
DOSES = (0.06, 0.05)  # ug/kg/min; the pump starts at 52.5 mL/h = 0.05
FINAL_PHASES = frozenset({"applied", "rejected", "failed", "uncertain", "needs_confirmation"})
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _client(port: int, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )


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


async def _echo_peer(port: int, ready: asyncio.Event) -> None:
    """Client B: re-publish every ping as a pong (QoS 1)."""
    async with _client(port, "bench-echo-b") as b:
        await b.subscribe("bench/ping", qos=1)
        ready.set()
        async for message in b.messages:
            await b.publish("bench/pong", message.payload, qos=1)


async def _measure(port: int, sim_url: str, n: int, probe_dir: Path) -> dict[str, Any]:
    regmap = load_profile("generic-pump-v1")
    status = regmap.decoder(["status", "rate", "executed_seq", "last_result"]).spans[0]
    command_reg = regmap["command"].address  # writing 0 = "no command", as the watchdog feed
    host_port = sim_url.removeprefix("tcp://").rsplit(":", 1)
    raw = AsyncModbusTcpClient(host_port[0], port=int(host_port[1]), retries=0)
    await raw.connect()
    # Context, not baseline: one durable journal commit on the same disk as the daemon's journal
    # (the daemon makes two, one after the other, on the way to ``applied``).
    journal = await AsyncJournal.open(probe_dir, gateway_id="bench-probe")
    commits: list[float] = []
    echo: list[float] = []
    modbus: list[float] = []
    daemon: list[float] = []
    phases: dict[str, int] = {}
    ready = asyncio.Event()
    command_topic = f"infusiond/{GATEWAY}/pump/{PUMP}/command"
    result_topic = f"{command_topic}/result"
    async with asyncio.TaskGroup() as tg:
        peer = tg.create_task(_echo_peer(port, ready), name="echo-peer")
        await ready.wait()
        async with _client(port, "bench-echo-a") as a, _client(port, "bench-commander") as c:
            await a.subscribe("bench/pong", qos=1)
            await c.subscribe(result_topic, qos=1)
            pongs, results = a.messages, c.messages
            doses = itertools.cycle(DOSES)
            for i in range(n + 5):  # the first 5 of each are warm-up
                t0 = time.perf_counter()
                await a.publish("bench/ping", str(i).encode(), qos=1)
                while (await anext(pongs)).payload != str(i).encode():
                    pass
                t1 = time.perf_counter()
                await raw.write_register(command_reg, 0, device_id=2)
                await raw.read_holding_registers(status.address, count=status.count, device_id=2)
                t2 = time.perf_counter()
                command_id = f"bench-{time.time_ns()}-{i}"
                await c.publish(
                    f"infusiond/{GATEWAY}/pump/{PUMP}/command",
                    _command(command_id, next(doses)),
                    qos=1,
                )
                while True:
                    body = json.loads((await anext(results)).payload)["data"]
                    if body.get("id") != command_id:
                        continue
                    phase = body["phase"]
                    if phase in (
                        "applied",
                        "rejected",
                        "failed",
                        "uncertain",
                        "needs_confirmation",
                    ):
                        break
                t3 = time.perf_counter()
                phases[phase] = phases.get(phase, 0) + 1
                if phase != "applied":
                    raise RuntimeError(f"command {command_id} ended {phase}: {body}")
                if i >= 5:
                    echo.append(t1 - t0)
                    modbus.append(t2 - t1)
                    daemon.append(t3 - t2)
                t4 = time.perf_counter()
                await journal.append(JournalKind.COMMAND, {"probe": i})
                commits.append(time.perf_counter() - t4)
                if i and i % 100 == 0:
                    progress(f"command_rtt: {i}/{n + 5} commands")
        peer.cancel()
    raw.close()
    await journal.aclose()
    e, m, d = summary_ms(echo), summary_ms(modbus), summary_ms(daemon)
    base50 = e["p50_ms"] + m["p50_ms"]
    base99 = e["p99_ms"] + m["p99_ms"]
    r50, r99 = d["p50_ms"] / base50, d["p99_ms"] / base99
    return {
        "bench": "command_rtt",
        "commands": n,
        "phases": phases,
        "daemon": d,
        "mqtt_echo": e,
        "modbus_write_read": m,
        "journal_commit": summary_ms(commits),
        "rows": [
            {
                "figure": "command_rtt p50: command -> applied",
                "value": d["p50_ms"],
                "unit": "ms",
                "baseline": round(base50, 3),
                "ratio": round(r50, 2),
                "target": f"<= {TARGET_RATIO:g}x and <= {TARGET_P50_MS:g} ms",
                "met": r50 <= TARGET_RATIO and d["p50_ms"] <= TARGET_P50_MS,
            },
            {
                "figure": "command_rtt p99: command -> applied",
                "value": d["p99_ms"],
                "unit": "ms",
                "baseline": round(base99, 3),
                "ratio": round(r99, 2),
                "target": f"<= {TARGET_RATIO:g}x",
                "met": r99 <= TARGET_RATIO,
            },
        ],
    }


def measure(*, quick: bool = False, n: int | None = None) -> dict[str, Any]:
    count = n if n is not None else (40 if quick else 300)
    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as tmp:
        work = Path(tmp)
        with broker(work) as mqtt, modbus_sims(2) as sims:
            config = write_config(
                work / "infusiond.toml",
                gateway_id=GATEWAY,
                broker_url=mqtt.url,
                data_dir=work / "data",
                endpoints=sims.endpoints[:1],
                control=True,
            )
            daemon = Daemon(config, work / "daemon")
            try:
                daemon.wait_ready()
                return asyncio.run(_measure(mqtt.port, sims.endpoints[0][0], count, work / "probe"))
            finally:
                daemon.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="commands to time")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick, n=args.n), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
