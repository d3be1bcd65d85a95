"""Home Assistant MQTT discovery (opt-in: ``[discovery] enabled = true``).

For every pump (rate, dose, status, volume infused, active alarms) and every bed (MAP, SBP, DBP,
heart rate, SpO2) the gateway publishes a retained sensor config on
``<prefix>/sensor/<node_id>/<object_id>/config``. Each config reads our retained state topic
with a ``value_template`` into the envelope (``value_json.data...``) and lists two availability
topics with ``availability_mode: all``: the pump's ``availability`` (plain ``online``/
``offline``, daemon/mqtt/availability.py) and the gateway's ``bridge/state`` (JSON; its last will
says ``offline``), so an entity is unavailable when its pump or the whole gateway is.

The topics published are remembered in ``<data_dir>/discovery.json``: a pump or bed removed from
the configuration (or a prefix changed) has its old configs cleared with an empty retained
payload at the next start, which is Home Assistant's way to delete an entity.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.base.config_sections import DiscoveryConfig
from daemon.base.envelope import encode
from daemon.base.payload import JsonObject
from daemon.base.topics import Topics

log = structlog.get_logger("infusiond.discovery")

STATE_FILE = "discovery.json"
MANUFACTURER = "infusiond"
_NOT_NODE_CHAR = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class PumpInfo:
    """What discovery says about one pump."""

    pump_id: str
    drug: str
    dose_unit: str
    driver: str


@dataclass(frozen=True, slots=True)
class Sensor:
    """One entity: its object id, name and how to read it from the state payload."""

    object_id: str
    name: str
    template: str
    unit: str | None = None
    state_class: str | None = None


def _value(field: str) -> str:
    """The template reading ``data.<field>.value``; a null field (a stopped pump's dose, a
    vital not measured yet) renders ``None``, which Home Assistant shows as unknown."""
    return f"{{{{ value_json.data.{field}.value if value_json.data.{field} else none }}}}"


def pump_sensors(pump: PumpInfo) -> tuple[Sensor, ...]:
    return (
        Sensor("rate", "Rate", _value("rate"), "mL/h", "measurement"),
        Sensor("dose", "Dose", _value("dose"), pump.dose_unit, "measurement"),
        Sensor("status", "Status", "{{ value_json.data.status }}"),
        Sensor(
            "volume",
            "Volume infused",
            _value("volume_infused"),
            "mL",
            "total",
        ),
        Sensor("alarms", "Active alarms", "{{ value_json.data.alarms | length }}", None, None),
    )


VITAL_SENSORS = (
    Sensor("map", "MAP", _value("map"), "mmHg", "measurement"),
    Sensor("sbp", "Systolic", _value("sbp"), "mmHg", "measurement"),
    Sensor("dbp", "Diastolic", _value("dbp"), "mmHg", "measurement"),
    Sensor("hr", "Heart rate", _value("hr"), "bpm", "measurement"),
    Sensor("spo2", "SpO2", _value("spo2"), "%", "measurement"),
)


def node_id(gateway_id: str, thing: str) -> str:
    """A discovery node id (letters, digits, ``_``, ``-``) for a pump or bed."""
    return _NOT_NODE_CHAR.sub("_", f"infusiond_{gateway_id}_{thing}")


def discovery_configs(
    topics: Topics,
    *,
    prefix: str,
    version: str,
    pumps: Iterable[PumpInfo],
    beds: Iterable[str],
) -> dict[str, bytes]:
    """Every retained discovery config: topic -> JSON payload."""
    gw = topics.gateway_id
    bridge = {
        "topic": topics.bridge_state,
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    out: dict[str, bytes] = {}
    for pump in pumps:
        node = node_id(gw, pump.pump_id)
        device = {
            "identifiers": [node],
            "name": f"{pump.pump_id} ({pump.drug})",
            "manufacturer": MANUFACTURER,
            "model": f"{pump.driver} infusion pump",
            "sw_version": version,
        }
        availability = [
            {
                "topic": topics.pump_availability(pump.pump_id),
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            bridge,
        ]
        for sensor in pump_sensors(pump):
            out[_topic(prefix, node, sensor)] = _config(
                sensor,
                unique_id=f"infusiond_{gw}_{pump.pump_id}_{sensor.object_id}",
                state_topic=topics.pump_state(pump.pump_id),
                device=device,
                availability=availability,
            )
    for bed in beds:
        node = node_id(gw, bed)
        device = {
            "identifiers": [node],
            "name": f"{bed} vitals",
            "manufacturer": MANUFACTURER,
            "model": "bedside vitals (HL7 monitor)",
            "sw_version": version,
        }
        for sensor in VITAL_SENSORS:
            out[_topic(prefix, node, sensor)] = _config(
                sensor,
                unique_id=f"infusiond_{gw}_{bed}_{sensor.object_id}",
                state_topic=topics.vitals_state(bed),
                device=device,
                availability=[bridge],
            )
    return out


def _topic(prefix: str, node: str, sensor: Sensor) -> str:
    return f"{prefix}/sensor/{node}/{sensor.object_id}/config"


def _config(
    sensor: Sensor,
    *,
    unique_id: str,
    state_topic: str,
    device: JsonObject,
    availability: list[dict[str, str]],
) -> bytes:
    """One entity's Home Assistant discovery config, encoded (its contract is HA's, not ours)."""
    config: JsonObject = {
        "name": sensor.name,
        "unique_id": unique_id,
        "state_topic": state_topic,
        "value_template": sensor.template,
        "availability": availability,
        "availability_mode": "all",
        "device": device,
        "qos": 1,
    }
    if sensor.unit is not None:
        config["unit_of_measurement"] = sensor.unit
    if sensor.state_class is not None:
        config["state_class"] = sensor.state_class
    return encode(config)


def _remembers(data_dir: Path) -> bool:
    """Whether an earlier start published configs here (one stat, at start)."""
    return (data_dir / STATE_FILE).exists()


def removed_topics(data_dir: Path, current: Iterable[str]) -> list[str]:
    """Config topics published at an earlier start that are not published now (blocking)."""
    path = data_dir / STATE_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("topics", [])
    except (OSError, ValueError, AttributeError):
        return []
    keep = set(current)
    return sorted(t for t in previous if isinstance(t, str) and t not in keep)


def remember_topics(data_dir: Path, topics: Iterable[str]) -> None:
    """Record the config topics published now (blocking; atomic rename)."""
    path = data_dir / STATE_FILE
    tmp = path.with_name(STATE_FILE + ".tmp")
    tmp.write_text(json.dumps({"topics": sorted(topics)}, indent=1), encoding="utf-8")
    tmp.replace(path)


async def publish(
    publish_retained: Callable[[str, bytes], None],
    topics: Topics,
    config: DiscoveryConfig,
    *,
    data_dir: Path,
    version: str,
    pumps: Iterable[PumpInfo],
    beds: Iterable[str],
) -> None:
    """Publish every config (when enabled) and an empty retained config for each one an earlier
    start published that is gone now (Home Assistant then deletes the entity)."""
    if not config.enabled and not _remembers(data_dir):
        return  # never enabled here: nothing to publish or clear
    configs: dict[str, bytes] = {}
    if config.enabled:
        configs = discovery_configs(
            topics, prefix=config.prefix, version=version, pumps=pumps, beds=beds
        )
    gone = await asyncio.to_thread(removed_topics, data_dir, configs)
    for topic in gone:
        publish_retained(topic, b"")
    for topic, payload in configs.items():
        publish_retained(topic, payload)
    if configs or gone:
        try:
            await asyncio.to_thread(remember_topics, data_dir, configs)
        except OSError as exc:  # never fatal: only a later removal would go unannounced
            log.warning("discovery_not_remembered", path=str(data_dir / STATE_FILE), error=str(exc))
