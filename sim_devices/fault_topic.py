"""Run-time faults over MQTT, for the simulated pumps and monitor of ``infusiond demo``.

A client publishes one event (the scenario format without ``at_s`` and ``pump``) on
``infusiond/<gateway>/sim/<pump-id>/fault``, e.g. ``{"fault": "occlusion"}`` (``action``
defaults to ``"fault"``) or ``{"action": "clear"}``; ``<pump-id>`` ``monitor`` takes monitor
faults (``{"action": "monitor", "fault": "garbled"}``). The answer comes on
``.../fault/result``: ``{"id", "pump", "status": "injected" | "rejected", "error"}``. Only
simulators listen here: ``infusiond run`` never subscribes to these topics, so nothing sent on
them reaches a real pump.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import structlog

from drivers.backoff import Backoff
from sim_devices.scenario import Event, MonitorEvent, ScenarioError, parse_event
from sim_devices.sim_bank import SimBank

log = structlog.get_logger("infusiond.sim.faults")

MAX_PAYLOAD_BYTES = 4096
MONITOR = "monitor"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
RUN_TIME_FORBIDDEN = ("at_s", "pump")


class FaultStatus(enum.StrEnum):
    """The ``status`` of an answer: rejected unless the fault was applied."""

    INJECTED = "injected"
    REJECTED = "rejected"


def fault_topic(gateway: str, pump: str = "+") -> str:
    """The control topic of ``pump`` (``+``: every pump) on gateway ``gateway``."""
    return f"infusiond/{gateway}/sim/{pump}/fault"


def handle(bank: SimBank, pump: str, payload: bytes) -> dict[str, Any]:
    """Validate and apply one control message; the answer to publish (never raises)."""
    answer: dict[str, Any] = {"id": None, "pump": pump, "status": FaultStatus.REJECTED.value}
    try:
        raw = _payload(payload)
        answer["id"] = _ident(raw.pop("id", None))
        event = _event(raw, pump)
        bank.apply(event, "")
    except ScenarioError as exc:
        answer["error"] = str(exc).lstrip(".: ")
        log.warning("sim fault rejected", pump=pump, error=answer["error"])
    else:
        answer["status"] = FaultStatus.INJECTED.value
        log.info("sim fault injected", pump=pump, applied=event.model_dump(mode="json"))
    return answer


def _ident(ident: object) -> str | None:
    if ident is not None and (not isinstance(ident, str) or not _ID.fullmatch(ident)):
        raise ScenarioError("id: must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return ident


def _event(raw: dict[str, Any], pump: str) -> Event:
    for key in RUN_TIME_FORBIDDEN:
        if key in raw:
            raise ScenarioError(
                f"{key}: not in a run-time fault (it applies now, to the pump of the topic)"
            )
    raw.setdefault("action", "monitor" if pump == MONITOR else "fault")
    event = parse_event({**raw, "at_s": 0, "pump": None if pump == MONITOR else pump}, "")
    if (pump == MONITOR) != isinstance(event, MonitorEvent):
        raise ScenarioError(
            f"action: monitor faults go to .../sim/{MONITOR}/fault, pump events to a pump id"
        )
    return event


def _payload(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ScenarioError(f"payload: larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"payload: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ScenarioError('payload: must be a JSON object such as {"fault": "occlusion"}')
    return raw


@dataclass
class FaultControl:
    """Listens on the control topics of one gateway's simulators and answers each message."""

    bank: SimBank
    host: str
    port: int
    gateway: str
    mqtt_v5: bool = True
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.2, maximum_s=5.0))

    @classmethod
    def for_broker(cls, bank: SimBank, url: str, gateway: str, *, mqtt_v5: bool) -> FaultControl:
        """For the broker at ``mqtt://HOST:PORT``."""
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        return cls(bank, host, int(port), gateway, mqtt_v5)

    async def run(self) -> None:
        """Serve until cancelled; reconnects when the broker goes away."""
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                delay = self.backoff.next_delay()
                log.warning("sim fault control disconnected", error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)

    async def _session(self) -> None:
        version = aiomqtt.ProtocolVersion.V5 if self.mqtt_v5 else aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"infusiond-sim-{self.gateway}", protocol=version
        ) as client:
            await client.subscribe(fault_topic(self.gateway), qos=1)
            self.backoff.reset()
            self.subscribed.set()
            async for message in client.messages:
                pump = _pump_of(str(message.topic), self.gateway)
                if pump is None or not isinstance(message.payload, bytes):
                    continue
                answer = handle(self.bank, pump, message.payload)
                await client.publish(
                    fault_topic(self.gateway, pump) + "/result",
                    json.dumps(answer),
                    qos=1,
                    retain=False,
                )


def _pump_of(topic: str, gateway: str) -> str | None:
    parts = topic.split("/")
    if len(parts) != 5 or parts[:3] != ["infusiond", gateway, "sim"] or parts[4] != "fault":
        return None
    return parts[3]
