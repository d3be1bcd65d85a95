"""Per-pump availability, Home Assistant discovery and bridge/health, on the real bedside
(mosquitto, simulators, the real Gateway)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest

from daemon.core.gateway import Gateway
from sim_devices.modbus_pump import Fault
from tests.e2e.harness import SCHEMAS, WAIT_S, Message, running_bedside, validate
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.asyncio

HA_SCHEMA = json.loads((SCHEMAS / "homeassistant" / "sensor-config.json").read_text())
PREFIX = "ha-test"
DISCOVERY = {"discovery": {"enabled": True, "prefix": PREFIX}}


def availability(message: Message, pump: str, value: bytes) -> bool:
    return message.topic.endswith(f"/pump/{pump}/availability") and message.payload == value


async def test_pump_availability_follows_the_pump_and_is_retained_plain_text(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """``online`` while the pump answers; ``offline`` once it stops answering; ``online`` again
    when it answers again. Retained, plain text."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        for pump in ("pump-1", "pump-2"):
            first = await bed.watch.wait_for(lambda m, p=pump: availability(m, p, b"online"))
            assert first.retain  # the watcher subscribes with retain-as-published
        seen = len(bed.watch.messages)
        bed.modbus.inject(Fault.NO_ANSWER, unit=1)
        await bed.watch.wait_for(lambda m: availability(m, "pump-1", b"offline"), after=seen)
        seen = len(bed.watch.messages)
        bed.modbus.clear(Fault.NO_ANSWER, unit=1)
        await bed.watch.wait_for(lambda m: availability(m, "pump-1", b"online"), after=seen)
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="late"
        ) as late:
            await late.subscribe("infusiond/gw-test/pump/pump-2/availability", qos=1)
            async with asyncio.timeout(WAIT_S):
                stored = await anext(late.messages)
            assert (stored.payload, stored.retain) == (b"online", True)


def template_path(template: str) -> list[str]:
    """The ``value_json`` path a discovery value_template reads."""
    found = re.search(r"value_json\.([A-Za-z0-9_.]+)", template)
    assert found is not None, template
    return found.group(1).split(".")


def walk(payload: Any, path: list[str]) -> Any:
    node = payload
    for part in path:
        assert isinstance(node, dict), f"{'.'.join(path)}: {part} is not in an object"
        assert part in node, f"{'.'.join(path)}: {part} missing from {sorted(node)}"
        node = node[part]
    return node


async def test_discovery_configs_are_valid_and_read_real_published_states(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """With ``[discovery] enabled``: five retained sensor configs per pump and per bed, each
    valid against docs/schemas/homeassistant/sensor-config.json, each reading a path that
    exists in the real state it names, available only when the pump and the gateway are."""
    async with running_bedside(tmp_path, mosquitto, extra=DISCOVERY) as bed:
        await bed.watch.client.subscribe(f"{PREFIX}/#", qos=1)
        # a bed's state carries its vitals once the monitor's first sample is in (before that,
        # ``map`` is null): the configs below are checked against that state
        await bed.watch.wait_for(
            lambda m: (
                m.topic.startswith("infusiond/gw-test/vitals/")
                and isinstance(m.json().get("data", {}).get("map"), dict)
            )
        )
        configs: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(WAIT_S):
            while len(configs) < 15:
                msg = await bed.watch.wait_for(
                    lambda m: m.topic.startswith(f"{PREFIX}/") and m.topic not in configs
                )
                configs[msg.topic] = msg.json()
        nodes = {topic.split("/")[2] for topic in configs}
        assert nodes == {
            "infusiond_gw-test_pump-1",
            "infusiond_gw-test_pump-2",
            "infusiond_gw-test_bed-1",
        }
        latest = {
            m.topic: m.json()
            for m in bed.watch.messages
            if m.topic.startswith("infusiond/")
            and m.topic.endswith("/state")
            and not m.topic.endswith("bridge/state")
        }
        for topic, config in configs.items():
            assert re.fullmatch(rf"{PREFIX}/sensor/[A-Za-z0-9_-]+/[a-z0-9]+/config", topic)
            jsonschema.validate(config, HA_SCHEMA)
            state = latest[config["state_topic"]]
            validate(state)
            value = walk(state, template_path(config["value_template"]))
            assert value is not None, f"{topic}: {config['value_template']} reads null"
            avail = [a["topic"] for a in config["availability"]]
            assert "infusiond/gw-test/bridge/state" in avail
            if "/pump/" in config["state_topic"]:
                pump = config["state_topic"].split("/")[3]
                assert f"infusiond/gw-test/pump/{pump}/availability" in avail
                assert config["availability_mode"] == "all"
        dose = configs[f"{PREFIX}/sensor/infusiond_gw-test_pump-2/dose/config"]
        assert dose["unit_of_measurement"] == "[USP'U]/min"
        assert len({c["unique_id"] for c in configs.values()}) == 15


async def test_a_removed_pump_gets_empty_retained_configs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Started again without pump-2, the gateway clears pump-2's discovery configs (an empty
    retained payload: Home Assistant deletes the entity) and keeps pump-1's."""
    async with running_bedside(tmp_path, mosquitto, extra=DISCOVERY) as bed:
        config = bed.config
    smaller = config.model_copy(update={"pumps": config.pumps[:1]})
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="ha"
    ) as ha:
        await ha.subscribe(f"{PREFIX}/sensor/infusiond_gw-test_pump-2/+/config", qos=1)
        retained = set()
        async with asyncio.timeout(WAIT_S):
            while len(retained) < 5:
                msg = await anext(ha.messages)
                assert msg.payload
                retained.add(msg.topic.value)
        gateway = Gateway(smaller)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(gateway.run(), name="gateway")
            cleared = set()
            async with asyncio.timeout(WAIT_S):
                while len(cleared) < 5:
                    msg = await anext(ha.messages)
                    assert msg.payload == b"", msg.topic.value
                    cleared.add(msg.topic.value)
            gateway.stop()
            await task
    assert cleared == retained


async def test_bridge_health_is_retained_valid_and_counts_real_work(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """bridge/health (every second here) validates against its schema and carries the polls
    both pumps answered, their last poll age, and a journal that has a size."""
    extra = {"health": {"publish_every_s": 1}}
    async with running_bedside(tmp_path, mosquitto, extra=extra) as bed:
        msg = await bed.watch.wait_for(
            lambda m: (
                m.topic == "infusiond/gw-test/bridge/health"
                and m.json()["data"]["pumps"].get("pump-1", {}).get("polls_ok", 0) > 0
            )
        )
        payload = msg.json()
        validate(payload)
        data = payload["data"]
        assert msg.retain
        for pump in ("pump-1", "pump-2"):
            assert data["pumps"][pump]["last_poll_age_s"] is not None
            assert data["pumps"][pump]["last_poll_age_s"] < 5
        assert data["journal_size_bytes"] > 0
        assert data["outbox_depth"] >= 0
        assert data["broker_reconnects"] == 0
        assert data["commands"]["in_flight"] == 0
