"""An end-to-end bedside for tests: real mosquitto, real simulators, the real Gateway.

Everything runs in the test's event loop except mosquitto (a process). The MQTT side of the
tests is a plain aiomqtt v5 client (:class:`Watcher`) that records every message and lets a test
wait for the one it expects (an event, never a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.base.config import Config
from daemon.core.gateway import Gateway
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.monitor import Monitor
from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator
from sim_devices.patient_model import Doses
from sim_devices.scenario import load_scenario
from tests.support.procs import Mosquitto

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
WAIT_S = 15.0
_ids = itertools.count(1)


def schema_for(payload: dict[str, Any]) -> dict[str, Any]:
    name = str(payload["schema"]).replace("/", "-")
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


def validate(payload: dict[str, Any]) -> None:
    """Every enveloped payload matches its published JSON Schema."""
    jsonschema.validate(payload, schema_for(payload))


def command(action: str = "set_dose", **fields: Any) -> dict[str, Any]:
    """A fresh, valid command (unique id, issued now)."""
    body: dict[str, Any] = {
        "id": f"t-{next(_ids)}-{datetime.now(UTC).timestamp()}",
        "issued_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ttl_s": 30,
        "by": {"clinician": "nurse-1"},
        "action": action,
    }
    body.update(fields)
    return body


def dose(value: float, unit: str = "ug/kg/min") -> dict[str, Any]:
    return {"value": value, "unit": unit}


def rate_of(message: Message) -> float | None:
    """The pump rate (mL/h) in a pump.state message, None before the first poll."""
    rate = message.json()["data"].get("rate")
    return None if rate is None else float(rate["value"])


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


@dataclass
class Watcher:
    """Records every message under the gateway's root; tests wait for what they expect."""

    client: aiomqtt.Client
    root: str
    messages: list[Message] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def pump_messages(self) -> None:
        """Record messages until cancelled or until the broker goes away (outage tests)."""
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                async with self.changed:
                    self.messages.append(Message(m.topic.value, payload, bool(m.retain)))
                    self.changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[Message], bool], *, timeout: float = WAIT_S, after: int = 0
    ) -> Message:
        """The first message (from index ``after``) matching ``predicate``."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for m in self.messages[after:]:
                    if predicate(m):
                        return m
                await self.changed.wait()

    async def event(self, pump_id: str, kind: str, *, after: int = 0) -> dict[str, Any]:
        """The first ``pump.event`` of ``kind`` for ``pump_id``, schema-validated."""
        msg = await self.wait_for(
            lambda m: (
                m.topic == f"{self.root}/pump/{pump_id}/event" and m.json()["data"]["type"] == kind
            ),
            after=after,
        )
        payload = msg.json()
        validate(payload)
        data: dict[str, Any] = payload["data"]
        return data

    def on(self, suffix: str) -> list[dict[str, Any]]:
        """Decoded payloads received on ``<root>/<suffix>``, in order."""
        return [m.json() for m in self.messages if m.topic == f"{self.root}/{suffix}"]

    async def result(self, cmd_id: str, phase: str, *, timeout: float = WAIT_S) -> dict[str, Any]:
        msg = await self.wait_for(
            lambda m: (
                m.topic.endswith("/command/result")
                and m.json()["data"].get("id") == cmd_id
                and m.json()["data"]["phase"] == phase
            ),
            timeout=timeout,
        )
        payload = msg.json()
        validate(payload)
        data: dict[str, Any] = payload["data"]
        return data

    async def send(
        self, pump_id: str, body: dict[str, Any] | bytes, *, retain: bool = False
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{self.root}/pump/{pump_id}/command", raw, qos=1, retain=retain)


@dataclass
class Bedside:
    """The running bedside: simulators, gateway, broker and a watcher."""

    broker: Mosquitto
    modbus: ModbusPumpSimulator
    newera: NewEraSimulator
    gateway: Gateway
    watch: Watcher
    config: Config


def bedside_config(
    *,
    data_dir: Path,
    broker_url: str,
    modbus_url: str,
    newera_url: str,
    vitals_port: int = 0,
    control: dict[str, Any] | None = None,
    poll_period_s: float = 0.25,
    extra: dict[str, Any] | None = None,
) -> Config:
    common = {
        "poll_period_s": poll_period_s,
        "bed": "bed-1",
        "library_profile": "adult-icu",
        "weight_kg": 70,
        "diluent": "D5W",
        "route": "central",
    }
    return Config(
        gateway_id="gw-test",
        data_dir=data_dir,
        broker={"url": broker_url},
        control=control or {"enabled": True, "allowlist": ["nurse-1", "dr-2"]},
        vitals=[{"listen": f"tcp://127.0.0.1:{vitals_port}", "bed": "bed-1"}],
        pumps=[
            {
                "id": "pump-1",
                "driver": "modbus",
                "url": modbus_url,
                "unit_id": 1,
                "drug": "norepinephrine",
                "concentration": {"value": 4, "unit": "ug/mL"},
                **common,
            },
            {
                "id": "pump-2",
                "driver": "newera",
                "url": newera_url,
                "address": 0,
                "drug": "vasopressin",
                "concentration": {"value": 0.2, "unit": "[USP'U]/mL"},
                **common,
            },
        ],
        **(extra or {}),
    )


@contextlib.asynccontextmanager
async def running_bedside(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    control: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[Bedside]:
    """Start simulators, monitor, gateway and watcher; wait until both pumps are online.
    ``extra``: further top-level configuration sections (e.g. ``discovery``)."""
    clock = SimClock()
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))], clock=clock
    )
    newera = NewEraSimulator(
        [NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True, reset_alarm=False)],
        clock=clock,
    )

    def doses() -> Doses:
        return Doses.from_pump_rates(
            weight_kg=70,
            norepinephrine_ml_h=float(modbus.pump(1).delivered_rate_ml_h),
            vasopressin_ml_h=float(newera.pumps[0].delivering_ml_h),
        )

    monitor = Monitor(load_scenario("demo").model(), dose_source=doses, clock=clock, interval_s=1.0)
    async with contextlib.AsyncExitStack() as stack:
        served = await stack.enter_async_context(modbus.serving("tcp://127.0.0.1:0"))
        await stack.enter_async_context(newera.serving("tcp://127.0.0.1:0"))
        config = bedside_config(
            data_dir=tmp_path / "data",
            broker_url=broker.url,
            modbus_url=served.url,
            newera_url=f"socket://127.0.0.1:{newera.port}",
            control=control,
            extra=extra,
        )
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        await stack.enter_async_context(client)
        root = f"infusiond/{config.gateway_id}"
        await client.subscribe(f"{root}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        watch = Watcher(client, root)
        gateway = Gateway(config)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(watch.pump_messages(), name="watcher")
            gw_task = tg.create_task(gateway.run(), name="gateway")
            mon: asyncio.Task[None] | None = None
            try:
                async with asyncio.timeout(WAIT_S):
                    await gateway.ready.wait()
                mon = tg.create_task(monitor.run(vitals_url(gateway)), name="monitor")
                for pump in ("pump-1", "pump-2"):
                    await watch.wait_for(
                        lambda m, p=pump: (
                            m.topic == f"{root}/pump/{p}/state"
                            and m.json()["data"]["connection"] == "online"
                        )
                    )
                yield Bedside(broker, modbus, newera, gateway, watch, config)
                # every enveloped payload published during the test matches its schema
                for message in list(watch.messages):
                    if message.payload.startswith(b"{") and message.topic.rsplit("/", 1)[-1] in (
                        "state",
                        "info",
                        "event",
                        "result",
                    ):
                        payload = message.json()
                        if "schema" in payload:
                            validate(payload)
            finally:
                if mon is not None:
                    mon.cancel()
                gateway.stop()
                try:
                    async with asyncio.timeout(WAIT_S):
                        await asyncio.shield(gw_task)
                except TimeoutError:
                    dump_tasks()
                    raise
                reader.cancel()


def vitals_url(gateway: Gateway) -> str:
    """Where the gateway's vitals listener is bound (configured with port 0: the OS picks).

    The listener binds as soon as the gateway runs, a few loop turns before the first pump poll
    can complete, so it is bound once ``gateway.ready`` is set.
    """
    assert len(gateway.vitals.listeners) == 1, "the vitals listener is not bound at gateway.ready"
    return gateway.vitals.listeners[0].url


def dump_tasks() -> None:
    """Print every task's stack (diagnostics for a shutdown that hangs)."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno}", file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)


def old_timestamp(seconds: float) -> str:
    when = datetime.now(UTC) - timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
