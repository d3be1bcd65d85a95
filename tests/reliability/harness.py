"""The bench for reliability and security tests: real simulators, a real gateway (in-process or
as a subprocess), a real mosquitto, and an MQTT probe that records everything the gateway says.

Nothing here sleeps to synchronise: :meth:`Probe.wait_for` waits on an asyncio.Condition that
is notified on every message, and :func:`poll_until` (for process state that has no event, such
as a journal file or /proc) polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.base.config import Config
from daemon.core.gateway import Gateway
from daemon.mqtt.bridge import BridgeState
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator

GW = "rel-gw"
ROOT = f"infusiond/{GW}"
WAIT_S = 15.0
CLINICIAN = "dr-a"
REPO = Path(__file__).resolve().parents[2]

# norepinephrine 4 ug/mL, 70 kg: 52.5 mL/h = 0.05 ug/kg/min, 63.0 mL/h = 0.06 ug/kg/min
NE_RATE = Decimal("52.5")
NE_RATE_UP = Decimal("63.0")
VP_RATE = Decimal("9.0")


# -- simulators --------------------------------------------------------------------------


@dataclass
class Bench:
    """pump-1 on a Modbus TCP simulator (unit 1), pump-2 on a New Era simulator (TCP socket)."""

    modbus: ModbusPumpSimulator
    newera: NewEraSimulator
    modbus_url: str
    newera_url: str

    def rate(self, pump: str = "pump-1") -> Decimal:
        """The rate the simulated device is actually set to."""
        if pump == "pump-1":
            return self.modbus.pump(1).rate
        return self.newera.pumps[0].rate_ml_h


@contextlib.asynccontextmanager
async def simulators() -> AsyncIterator[Bench]:
    clock = SimClock(speed=1.0)
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=NE_RATE)], clock=clock
    )
    newera = NewEraSimulator(
        [NewEraPumpSetup(address=0, rate_ml_h=VP_RATE, running=True, reset_alarm=False)],
        clock=clock,
    )
    async with modbus.serving("tcp://127.0.0.1:0") as served, newera.serving("tcp://127.0.0.1:0"):
        yield Bench(modbus, newera, served.url, f"socket://127.0.0.1:{newera.port}")


def bedside(
    bench: Bench,
    *,
    broker_url: str,
    data_dir: Path,
    poll_period_s: float = 0.5,
    control: Mapping[str, Any] | None = None,
    broker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A gateway config (as TOML-able data) for the bench's two pumps."""
    common = {
        "bed": "bed-1",
        "diluent": "D5W",
        "route": "central",
        "library_profile": "adult-icu",
        "weight_kg": 70,
        "poll_period_s": poll_period_s,
        "publish_every_s": 2.0,
    }
    return {
        "gateway_id": GW,
        "data_dir": str(data_dir),
        "log_level": "info",
        "broker": {"url": broker_url, **(broker or {})},
        "control": dict(control or {"enabled": True, "allowlist": [CLINICIAN]}),
        "pumps": [
            {
                "id": "pump-1",
                "driver": "modbus",
                "url": bench.modbus_url,
                "unit_id": 1,
                "drug": "norepinephrine",
                "concentration": {"value": 4, "unit": "ug/mL"},
                **common,
            },
            {
                "id": "pump-2",
                "driver": "newera",
                "url": bench.newera_url,
                "address": 0,
                "drug": "vasopressin",
                "concentration": {"value": 0.2, "unit": "[USP'U]/mL"},
                **common,
            },
        ],
    }


# -- TOML for subprocess configs ---------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data``: scalars first, then ``[section]`` tables, then ``[[pumps]]`` arrays."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"\n[[{key}]]")
                tables.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items())
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


# -- commands ----------------------------------------------------------------------------


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def command(
    action: str = "set_rate",
    *,
    cid: str | None = None,
    issued_at: datetime | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A well-formed command (a set_rate to 63.0 mL/h unless told otherwise)."""
    body: dict[str, Any] = {
        "id": cid or f"c-{uuid.uuid4().hex[:12]}",
        "issued_at": iso(issued_at or datetime.now(UTC)),
        "ttl_s": 30,
        "by": {"clinician": CLINICIAN},
        "action": action,
    }
    if action == "set_rate" and "rate" not in fields:
        body["rate"] = {"value": float(NE_RATE_UP), "unit": "mL/h"}
    body.update(fields)
    return body


# -- the MQTT probe ----------------------------------------------------------------------


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    @property
    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def data(self) -> Any:
        return self.json["data"]


@dataclass
class Probe:
    """An MQTT v5 client that records every message under the gateway's root."""

    client: aiomqtt.Client
    messages: list[Message] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _collect(self) -> None:
        async for msg in self.client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else b""
            async with self.changed:
                self.messages.append(Message(msg.topic.value, payload, bool(msg.retain)))
                self.changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[Message], bool], *, after: int = 0, timeout: float = WAIT_S
    ) -> Message:
        """The first message (at index >= ``after``) matching ``predicate``."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for msg in self.messages[after:]:
                    if predicate(msg):
                        return msg
                await self.changed.wait()

    async def wait_count(
        self, predicate: Callable[[Message], bool], count: int, *, timeout: float = WAIT_S
    ) -> list[Message]:
        async with asyncio.timeout(timeout), self.changed:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                await self.changed.wait()

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.messages if m.topic == f"{ROOT}/{suffix}"]

    async def send(self, pump: str, body: Mapping[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{ROOT}/pump/{pump}/command", payload, qos=1)

    async def result(self, cid: str | None, phase: str | None = None, *, after: int = 0) -> Any:
        """The ``command/result`` data with this id (and phase, when given)."""
        msg = await self.wait_for(
            lambda m: (
                m.topic.endswith("/command/result")
                and m.data.get("id") == cid
                and (phase is None or m.data.get("phase") == phase)
            ),
            after=after,
        )
        return msg.data


async def pumps_online(
    p: Probe, after: int = 0, pumps: tuple[str, ...] = ("pump-1", "pump-2")
) -> None:
    """Wait until the gateway has published each pump's state as ``online``."""
    for pump in pumps:
        await p.wait_for(
            lambda m, pump=pump: (
                m.topic == f"{ROOT}/pump/{pump}/state" and m.json["data"]["connection"] == "online"
            ),
            after=after,
        )


@contextlib.asynccontextmanager
async def probe(
    url: str,
    topic: str = f"{ROOT}/#",
    *,
    identifier: str | None = None,
    persistent: bool = False,
    **client_kw: Any,
) -> AsyncIterator[Probe]:
    """Subscribe to ``topic`` (QoS 1). ``persistent``: a v5 session that outlives disconnects."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    props = None
    if persistent:
        from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415 - only for sessions
        from paho.mqtt.properties import Properties  # noqa: PLC0415

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    client = aiomqtt.Client(
        host,
        int(port),
        identifier=identifier or f"probe-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=props,
        **client_kw,
    )
    async with client:
        p = Probe(client)
        task = asyncio.create_task(p._collect(), name="probe-collect")
        await client.subscribe(topic, options=SubscribeOptions(qos=1))
        try:
            yield p
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- the gateway -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_gateway(config: Mapping[str, Any]) -> AsyncIterator[Gateway]:
    """An in-process gateway, yielded once every pump has been polled once and the MQTT bridge
    is online (subscribed to commands)."""
    gateway = Gateway(Config(**config))
    task = asyncio.create_task(gateway.run(), name="gateway-under-test")
    ready = asyncio.create_task(gateway.ready.wait(), name="gateway-ready")
    try:
        async with asyncio.timeout(WAIT_S):
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        async with asyncio.timeout(WAIT_S):  # subscribed to commands, retained state sent
            await gateway.bridge.wait_state(BridgeState.ONLINE, connections=1)
        yield gateway
    finally:
        ready.cancel()
        gateway.stop()
        async with asyncio.timeout(WAIT_S):
            await task


@dataclass
class Daemon:
    """``python -m daemon.cli run --config PATH`` as a real child process."""

    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def daemon_process(config_path: Path, log_path: Path) -> Iterator[Daemon]:
    d = Daemon(config_path, log_path)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def poll_until(predicate: Callable[[], bool], *, timeout: float = WAIT_S, what: str = "") -> None:
    """For state with no event to wait on (files, /proc): check with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
