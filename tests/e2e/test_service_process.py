"""`infusiond run` as a real process: READY=1, last will on a crash, restart continuity,
clean shutdown, and configuration errors that name the key."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest

from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.support.procs import Mosquitto

ROOT = "infusiond/gw-proc"


def write_config(path: Path, *, broker: Mosquitto, modbus_url: str, data_dir: Path) -> Path:
    path.write_text(
        f"""
gateway_id = "gw-proc"
data_dir = "{data_dir}"

[broker]
url = "{broker.url}"
keepalive_s = 5

[control]
enabled = true
allowlist = ["nurse-1"]

[[pumps]]
id = "pump-1"
driver = "modbus"
url = "{modbus_url}"
unit_id = 1
poll_period_s = 0.25
drug = "norepinephrine"
concentration = {{ value = 4, unit = "ug/mL" }}
diluent = "D5W"
route = "central"
library_profile = "adult-icu"
weight_kg = 70
"""
    )
    return path


class Daemon:
    """`python -m daemon.cli run --config` with a NOTIFY_SOCKET we listen on."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.notify_path = workdir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.log = (workdir / "daemon.log").open("wb")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    async def notification(self, key: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.notify, 4096)).decode()
                if f"{key}=" in data:
                    return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.log.close()


@asynccontextmanager
async def subscriber(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(f"{ROOT}/#", qos=1)
        yield client


async def next_payload(client: aiomqtt.Client, topic: str, predicate: object = None) -> dict:
    async with asyncio.timeout(20):
        async for m in client.messages:
            if m.topic.value == topic:
                payload = json.loads(m.payload)  # type: ignore[arg-type]
                if predicate is None or predicate(payload):  # type: ignore[operator]
                    return payload  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


@pytest.mark.asyncio
async def test_ready_last_will_and_restart_continuity(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """READY=1 after the first poll; SIGKILL -> broker publishes offline; a change made at the
    pump meanwhile is reported after the restart; the session is kept, seq continues, and the
    journal verifies."""
    sim = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal(21))]
    )
    async with sim.serving("tcp://127.0.0.1:0") as served:
        data_dir = tmp_path / "data"
        config = write_config(
            tmp_path / "gw.toml", broker=mosquitto, modbus_url=served.url, data_dir=data_dir
        )
        async with subscriber(mosquitto) as sub:
            first = Daemon(config, tmp_path)
            try:
                assert "READY=1" in await first.notification("READY")
                online = await next_payload(sub, f"{ROOT}/bridge/state")
                assert online == {"state": "online"}
                state = await next_payload(
                    sub,
                    f"{ROOT}/pump/pump-1/state",
                    lambda p: p["data"]["connection"] == "online",
                )
                session, seq = state["session"], state["seq"]
                assert seq >= 1  # the connection_changed event
                first.proc.kill()
                first.proc.wait()
                will = await next_payload(sub, f"{ROOT}/bridge/state")
                assert will == {"state": "offline"}
            finally:
                first.close()
            (tmp_path / "notify.sock").unlink()
            sim.inject("front_panel_rate", 30)  # changed at the pump while the daemon is down
            second = Daemon(config, tmp_path)
            try:
                await second.notification("READY")
                missed = await next_payload(
                    sub,
                    f"{ROOT}/pump/pump-1/event",
                    lambda p: p["data"]["type"] == "rate_changed",
                )
                assert missed["data"]["source"] == "device"
                assert missed["data"]["while_disconnected"] is True
                assert missed["data"]["from"]["rate"]["value"] == 21.0
                assert missed["data"]["to"]["rate"]["value"] == 30.0
                sim.inject("front_panel_rate", 42)
                event = await next_payload(
                    sub,
                    f"{ROOT}/pump/pump-1/event",
                    lambda p: p["data"]["type"] == "rate_changed",
                )
                assert event["session"] == session
                assert event["seq"] > missed["seq"] > seq
                assert event["data"]["from"]["rate"]["value"] == 30.0
                second.proc.send_signal(signal.SIGTERM)
                assert second.proc.wait(timeout=15) == 0
                bye = await next_payload(sub, f"{ROOT}/bridge/state")
                assert bye == {"state": "offline"}
            finally:
                second.close()
    verify = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "journal", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('gateway_id = "gw"\n[broker]\nurl = "http://x"\n', "broker.url"),
        ('gateway_id = "gw"\nbogus = 1\n', "bogus"),
        (
            (
                'gateway_id = "gw"\n[[pumps]]\nid = "p"\ndriver = "modbus"\nurl = "tcp://h:1"\n'
                'drug = "aspirin"\nconcentration = {value = 1, unit = "mg/mL"}\ndiluent = "NS"\n'
                'route = "central"\nlibrary_profile = "adult-icu"\n'
            ),
            "pumps[0].drug",
        ),
    ],
)
def test_config_errors_name_the_key_and_exit_1(tmp_path: Path, toml: str, names: str) -> None:
    """An invalid config fails at start with the offending key, not a traceback."""
    config = tmp_path / "bad.toml"
    config.write_text(f'data_dir = "{tmp_path / "d"}"\n' + toml)
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert names in proc.stderr
    assert "Traceback" not in proc.stderr
