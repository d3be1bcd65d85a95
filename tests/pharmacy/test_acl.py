"""The shipped broker ACL (systemd/mosquitto.acl): only the pharmacy role can reach the
gateway's library request topic; a command-role account cannot push a library."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.pharmacy.harness import SHIPPED, Keys, running_ward, variant
from tests.pharmacy.test_reload import push_body, signed_config
from tests.support.procs import Mosquitto, shipped_acl_broker

LOGINS = {
    "infusiond-gw-test": "gw-1",
    "titration-app": "cmd-2",
    "pharmacy-library": "lib-3",
    "dashboard": "ro-4",
}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with shipped_acl_broker(tmp_path, LOGINS, "gw-test") as broker:
        yield broker


async def publish_as(broker: Mosquitto, user: str, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 as ``user``; a PUBACK refusing it (not authorized) is not an error
    here: what matters is whether the gateway answers."""
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=LOGINS[user],
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"acl-{user}",
    ) as client:
        with contextlib.suppress(aiomqtt.MqttCodeError):
            await client.publish(topic, payload, qos=1)


@pytest.mark.asyncio
async def test_only_the_pharmacy_role_reaches_the_library_request_topic(
    tmp_path: Path, acl_broker: Mosquitto
) -> None:
    """The command role's push is dropped by the broker (never answered, library unchanged);
    the pharmacy role's push of the same signed library is answered ok and installed."""
    keys = Keys.make(tmp_path / "keys")
    new = variant(version="2026.12.3", soft_max="0.055")
    async with running_ward(
        tmp_path,
        acl_broker,
        signed_config(tmp_path, keys, SHIPPED),
        gateway_login=("infusiond-gw-test", LOGINS["infusiond-gw-test"]),
        watcher_login=("dashboard", LOGINS["dashboard"]),
    ) as ward:
        topic = f"{ward.root}/bridge/request/library"
        start = len(ward.watch.messages)
        await publish_as(
            acl_broker,
            "titration-app",
            topic,
            json.dumps(push_body(new, keys, req="cmd-role")).encode(),
        )
        await publish_as(
            acl_broker,
            "pharmacy-library",
            topic,
            json.dumps(push_body(new, keys, req="pharmacy")).encode(),
        )
        answer = await ward.watch.wait_for(
            lambda m: m.topic == f"{ward.root}/bridge/response/library", after=start
        )
        assert answer.json()["data"]["id"] == "pharmacy"
        assert answer.json()["data"]["status"] == "ok"
        responses = ward.watch.on("bridge/response/library")
        assert [r["data"]["id"] for r in responses] == ["pharmacy"]
        assert ward.gateway.gate.library.version == "2026.12.3"
