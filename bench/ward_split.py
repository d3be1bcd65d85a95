"""Bench ``ward``: one ward split across two gateways (two daemons) on one broker.

No clustering: each daemon is an ordinary ``infusiond run`` with its own ``gateway_id``
(``ward-a``, ``ward-b``), its own journal and its own share of the pumps; the topic tree
``infusiond/<gateway_id>/...`` keeps them apart, and a consumer that wants the whole ward
subscribes to ``infusiond/+/pump/+/state``. The bench starts both daemons at once, checks that
one subscriber sees every pump of both (retained states, under the right gateway), and measures
each daemon's poll lateness and CPU over the same window.

    python -m bench.ward_split [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bench.harness import (
    Daemon,
    broker,
    cpu_share,
    modbus_sims,
    progress,
    sample,
    starved_share,
    write_config,
)
from bench.scale import window_quantile

GATEWAYS = ("ward-a", "ward-b")


async def _seen_states(port: int, expected: int, timeout: float) -> dict[str, set[str]]:
    """pump ids per gateway id seen on ``infusiond/+/pump/+/state`` (retained) by one client."""
    seen: dict[str, set[str]] = {}
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="bench-ward-watch") as client,
        asyncio.timeout(timeout),
    ):
        await client.subscribe("infusiond/+/pump/+/state", qos=1)
        async for message in client.messages:
            _root, gateway, _pump, pump_id, _state = message.topic.value.split("/")
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            if body["gateway"] != gateway or body["data"]["pump_id"] != pump_id:
                raise RuntimeError(f"state on {message.topic.value} is for {body['gateway']}")
            seen.setdefault(gateway, set()).add(pump_id)
            if sum(len(s) for s in seen.values()) >= expected:
                return seen
    return seen


def measure(*, quick: bool = False, per_gateway: int | None = None) -> dict[str, Any]:
    n = per_gateway or (25 if quick else 250)
    warmup, window = (1.0, 5.0) if quick else (5.0, 15.0)
    with tempfile.TemporaryDirectory(prefix="bench-ward-") as tmp:
        work = Path(tmp)
        with broker(work) as mqtt, modbus_sims(2 * n) as sims:
            daemons: list[Daemon] = []
            try:
                for index, gateway in enumerate(GATEWAYS):
                    gw_dir = work / gateway
                    gw_dir.mkdir()
                    config = write_config(
                        gw_dir / "infusiond.toml",
                        gateway_id=gateway,
                        broker_url=mqtt.url,
                        data_dir=gw_dir / "data",
                        endpoints=sims.endpoints[index * n : (index + 1) * n],
                        first_pump=index * n + 1,
                    )
                    daemons.append(Daemon(config, gw_dir, stats=True))
                ready = [d.wait_ready(timeout=120) for d in daemons]
                progress(f"ward: both gateways ready ({n} pumps each)")
                seen = asyncio.run(_seen_states(mqtt.port, 2 * n, timeout=30))
                time.sleep(warmup)  # let start-up settle, as in bench/scale.py
                h0 = [d.poll_stats() for d in daemons]
                s0 = [sample(d.pid) for d in daemons]
                time.sleep(window)  # the measurement window
                h1 = [d.poll_stats() for d in daemons]
                s1 = [sample(d.pid) for d in daemons]
            finally:
                for daemon in daemons:
                    daemon.close()
    per_gw: dict[str, dict[str, Any]] = {
        gateway: {
            "pumps": n,
            "ready_s": round(ready[i], 2),
            "states_seen": len(seen.get(gateway, ())),
            "lateness_p99_ms": window_quantile(h0[i], h1[i], 0.99),
            "cpu_cores": round(cpu_share(s0[i], s1[i]), 3),
            "waiting_for_cpu": round(starved_share(s0[i], s1[i]), 3),
            "rss_mb": round(s1[i].rss_kb / 1024, 1),
        }
        for i, gateway in enumerate(GATEWAYS)
    }
    total = sum(g["states_seen"] for g in per_gw.values())
    progress(f"ward: {json.dumps(per_gw)}")
    return {
        "bench": "ward",
        "window_s": window,
        "gateways": per_gw,
        "rows": [
            {
                "figure": "ward: 2 gateways on one broker, pumps seen on infusiond/+/pump/+/state",
                "value": total,
                "unit": "pumps",
                "baseline": None,
                "ratio": None,
                "target": f"all {2 * n}, each under its own gateway id",
                "met": total == 2 * n and all(g["states_seen"] == n for g in per_gw.values()),
            }
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--per-gateway", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick, per_gateway=args.per_gateway), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
