"""A bedside for the pharmacy tests: real mosquitto, real simulators, the real Gateway and
journal, with a ``[library]`` section and signing keys made in the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.base.config import Config
from daemon.base.config_sections import LibraryConfig
from daemon.core.gateway import Gateway
from daemon.pharmacy.signing import private_pem, public_pem, sign_library
from protocol.library import DEFAULT_LIBRARY_PATH
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator
from tests.e2e.harness import WAIT_S, Watcher, bedside_config, dump_tasks
from tests.support.procs import Mosquitto

SHIPPED = DEFAULT_LIBRARY_PATH.read_bytes()
NE_SOFT = b"soft = { min = 0.01, max = 1.0 }"


def variant(*, version: str, soft_max: str = "1.0", hard_max: str = "3.0") -> bytes:
    """The shipped library with another version and adult-icu norepinephrine limits."""
    text = SHIPPED.replace(b'version = "2026.12.1"', f'version = "{version}"'.encode(), 1)
    text = text.replace(NE_SOFT, f"soft = {{ min = 0.01, max = {soft_max} }}".encode(), 1)
    return text.replace(
        b"hard = { min = 0.0, max = 3.0 }", f"hard = {{ min = 0.0, max = {hard_max} }}".encode(), 1
    )


@dataclass(frozen=True)
class Keys:
    """A signing key pair on disk (PKCS#8 private, SubjectPublicKeyInfo public)."""

    private: Ed25519PrivateKey
    private_path: Path
    public_path: Path

    @classmethod
    def make(cls, where: Path, name: str = "pharmacy") -> Keys:
        key = Ed25519PrivateKey.generate()
        where.mkdir(parents=True, exist_ok=True)
        priv, pub = where / f"{name}.key.pem", where / f"{name}.pub.pem"
        priv.write_bytes(private_pem(key))
        pub.write_bytes(public_pem(key.public_key()))
        return cls(key, priv, pub)

    def sign(self, data: bytes) -> str:
        return sign_library(self.private, data)


@dataclass
class Ward:
    gateway: Gateway
    watch: Watcher
    client: aiomqtt.Client
    root: str
    modbus: ModbusPumpSimulator

    async def push(
        self, body: dict[str, Any] | bytes, *, correlation: bytes = b"corr-1", retain: bool = False
    ) -> dict[str, Any]:
        """Publish a library request; the enveloped response carrying ``correlation``."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
        props.ResponseTopic = "infusiond-replies/pharmacy/1"
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        start = len(self.watch.messages)
        await self.client.publish(
            f"{self.root}/bridge/request/library", raw, qos=1, retain=retain, properties=props
        )
        msg = await self.watch.wait_for(
            lambda m: m.topic == f"{self.root}/bridge/response/library", after=start
        )
        found: dict[str, Any] = msg.json()
        found["_correlation"] = msg.correlation
        return found


@contextlib.asynccontextmanager
async def running_ward(
    tmp_path: Path,
    broker: Mosquitto,
    library: dict[str, Any],
    *,
    gateway_login: tuple[str, str] | None = None,
    watcher_login: tuple[str, str] | None = None,
    gateway_id: str = "gw-test",
) -> AsyncIterator[Ward]:
    """Simulators, a gateway ``gateway_id`` with ``library`` as its [library] section, and a
    v5 watcher (each logging in to the broker when a (username, password) is given)."""
    clock = SimClock()
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))], clock=clock
    )
    newera = NewEraSimulator(
        [NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True, reset_alarm=False)],
        clock=clock,
    )
    async with contextlib.AsyncExitStack() as stack:
        served = await stack.enter_async_context(modbus.serving("tcp://127.0.0.1:0"))
        await stack.enter_async_context(newera.serving("tcp://127.0.0.1:0"))
        base = bedside_config(
            data_dir=tmp_path / "data",
            broker_url=broker.url,
            modbus_url=served.url,
            newera_url=f"socket://127.0.0.1:{newera.port}",
        )
        fields = base.model_dump(exclude={"library"})
        if gateway_login is not None:
            fields["broker"] = {
                "url": broker.url,
                "username": gateway_login[0],
                "password": gateway_login[1],
            }
        config = Config(**{**fields, "gateway_id": gateway_id, "library": library})
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            username=watcher_login[0] if watcher_login else None,
            password=watcher_login[1] if watcher_login else None,
        )
        await stack.enter_async_context(client)
        root = f"infusiond/{config.gateway_id}"
        await client.subscribe(f"{root}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        watch = CorrelatingWatcher(client, root)
        gateway = Gateway(config)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(watch.pump_messages(), name="watcher")
            gw_task = tg.create_task(gateway.run(), name="gateway")
            try:
                async with asyncio.timeout(WAIT_S):
                    await gateway.ready.wait()
                await watch.wait_for(
                    lambda m: (
                        m.topic == f"{root}/pump/pump-1/state"
                        and m.json()["data"]["connection"] == "online"
                    )
                )
                yield Ward(gateway, watch, client, root, modbus)
            finally:
                gateway.stop()
                try:
                    async with asyncio.timeout(WAIT_S):
                        await asyncio.shield(gw_task)
                except TimeoutError:
                    dump_tasks()
                    raise
                reader.cancel()


class CorrelatingWatcher(Watcher):
    """A :class:`Watcher` that also keeps each message's correlation data."""

    async def pump_messages(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                props = m.properties
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                async with self.changed:
                    self.messages.append(_Message(m.topic.value, payload, bool(m.retain), corr))
                    self.changed.notify_all()


@dataclass
class _Message:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


__all__ = ["Keys", "LibraryConfig", "Ward", "running_ward", "variant"]
