"""`infusiond demo`, as a user runs it: the printed commands work against the live bedside."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.e2e.harness import validate
from tests.support.procs import wait_for_line

_n = itertools.count(1)


def read_banner(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """stdout up to the banner's last line (the demo prints it once the daemon is ready)."""
    return wait_for_line(proc, b"Ctrl-C stops everything.", timeout, proc.stdout).decode()


async def collect(port: int, topic: str, want: int, timeout: float = 20.0) -> list[Any]:
    """The first ``want`` payloads on ``topic``: JSON, or text for the plain availability."""
    got: list[Any] = []
    # explicit, unique client ids: amqtt would otherwise give empty-id clients one session
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311, identifier=f"t-{next(_n)}"
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for m in client.messages:
                raw = m.payload
                assert isinstance(raw, bytes)
                # availability is plain text (online/offline), as Home Assistant expects
                plain = m.topic.value.endswith("/availability")
                got.append((m.topic.value, raw.decode() if plain else json.loads(raw)))
                if len(got) >= want:
                    break
    return got


@pytest.mark.asyncio
async def test_demo_bedside_titration_and_rejection_as_printed(tmp_path: Path) -> None:
    """The banner's mosquitto_pub titrates pump-1 to 63.0 mL/h; 5 ug/kg/min is rejected."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "demo",
            "--data-dir",
            str(tmp_path / "d"),
            "--pumps",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        banner = read_banner(proc)
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        assert "pump-3" in banner
        dashboard = re.search(r"Dashboard: (http://\S+)", banner).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(dashboard + "config.json", timeout=10) as reply:
            config = json.load(reply)
        assert config["gateway"] == "demo"
        assert config["broker_ws_url"].startswith("ws://127.0.0.1:")
        states = await collect(port, "infusiond/demo/+/+/state", 4)
        everything = await collect(port, "infusiond/demo/#", 12)
        for topic, payload in everything:  # every payload the demo publishes matches its schema
            if topic.endswith("/availability"):
                assert payload in {"online", "offline"}
            elif "schema" in payload:
                validate(payload)
        by_topic = {t: p["data"] for t, p in states}
        pump1 = by_topic["infusiond/demo/pump/pump-1/state"]
        assert pump1["rate"] == {"value": 52.5, "unit": "mL/h"}
        assert pump1["drug"] == "norepinephrine"
        assert by_topic["infusiond/demo/pump/pump-2/state"]["rate"]["value"] == 9.0
        assert "infusiond/demo/vitals/bed-1/state" in by_topic
        pub = next(line.strip() for line in banner.splitlines() if "mosquitto_pub" in line)
        results = asyncio.create_task(collect(port, "infusiond/demo/pump/pump-1/command/result", 2))
        await asyncio.sleep(0.5)  # let the subscription settle (no event to wait on in a shell)
        subprocess.run(["bash", "-c", pub], check=True, timeout=10)
        answers = await results
        phases = [p["data"]["phase"] for _t, p in answers]
        assert phases == ["accepted", "applied"]
        over = {
            "id": "over-1",
            "issued_at": _now(),
            "ttl_s": 30,
            "by": {"clinician": "x"},
            "action": "set_dose",
            "dose": {"value": 5, "unit": "ug/kg/min"},
        }
        results = asyncio.create_task(collect(port, "infusiond/demo/pump/pump-1/command/result", 1))
        await asyncio.sleep(0.5)
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311, identifier="t-pub"
        ) as client:
            await client.publish("infusiond/demo/pump/pump-1/command", json.dumps(over), qos=1)
        ((_t, rejected),) = await results
        assert rejected["data"]["phase"] == "rejected"
        assert "HARD_MAX" in {f["rule"] for f in rejected["data"]["verdict"]["findings"]}
        kept = {**over, "id": "kept-1", "dose": {"value": 0.07, "unit": "ug/kg/min"}}
        results = asyncio.create_task(collect(port, "infusiond/demo/pump/pump-1/command/result", 1))
        await asyncio.sleep(0.5)
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311, identifier="t-kept"
        ) as client:
            topic = "infusiond/demo/pump/pump-1/command"
            await client.publish(topic, json.dumps(kept), qos=1, retain=True)
            ((_t, refused),) = await results
            await client.publish(topic, b"", qos=1, retain=True)  # clear it
        assert refused["data"]["phase"] == "rejected"
        assert refused["data"]["error"]["code"] == "retained"
        state = await collect(port, "infusiond/demo/pump/pump-1/state", 1)
        assert state[0][1]["data"]["rate"]["value"] == 63.0
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()
        assert code == 0


def _now() -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
