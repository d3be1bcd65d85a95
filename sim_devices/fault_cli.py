"""``infusiond sim fault``: send one run-time fault to a simulated pump of ``infusiond demo``.

Examples::

    infusiond sim fault pump-1 occlusion
    infusiond sim fault pump-1 '{"action": "clear"}'
    infusiond sim fault pump-2 '{"fault": "slow", "value": 1.5}' --broker mqtt://127.0.0.1:1883
    infusiond sim fault monitor garbled

The fault goes to ``infusiond/<gateway>/sim/<pump>/fault`` (:mod:`sim_devices.fault_topic`);
the answer is printed as JSON. Exit 0 when it was injected, 1 when the demo rejected it (the
answer names the field), 2 for a bad option or when no answer came within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import aiomqtt

from sim_devices.fault_topic import FaultStatus, fault_topic
from sim_devices.scenario import ScenarioError

EXIT_INJECTED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def event_of(text: str) -> dict[str, Any]:
    """``occlusion`` (a fault name) or a JSON object (one event); ScenarioError otherwise."""
    if not text.lstrip().startswith("{"):
        return {"fault": text}
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"EVENT is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ScenarioError("EVENT must be a fault name or a JSON object")
    return event


async def send_fault(
    broker: str, gateway: str, pump: str, event: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Publish ``event`` for ``pump`` and return the demo's answer (TimeoutError if none)."""
    host, _, port = broker.removeprefix("mqtt://").rpartition(":")
    ident = f"cli-{uuid.uuid4().hex[:12]}"
    topic = fault_topic(gateway, pump)
    async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(f"{topic}/result", qos=1)
        await client.publish(topic, json.dumps({**event, "id": ident}), qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    answer: dict[str, Any] = json.loads(message.payload)
                    if answer.get("id") == ident:
                        return answer
    raise TimeoutError  # pragma: no cover - the message stream only ends with the client


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond sim fault``."""
    if not str(args.broker).startswith("mqtt://") or ":" not in args.broker[7:]:
        sys.stderr.write("infusiond sim fault: --broker must be mqtt://HOST:PORT\n")
        return EXIT_USAGE
    try:
        event = event_of(args.event)
    except ScenarioError as exc:
        sys.stderr.write(f"infusiond sim fault: {exc}\n")
        return EXIT_USAGE
    coro = send_fault(args.broker, args.gateway, args.pump, event, args.timeout)
    try:
        answer = asyncio.run(coro)
    except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
        reason = "no answer (is infusiond demo running on that broker?)"
        sys.stderr.write(f"infusiond sim fault: {reason}: {exc or 'timed out'}\n")
        return EXIT_USAGE
    sys.stdout.write(json.dumps(answer) + "\n")
    return EXIT_INJECTED if answer.get("status") == FaultStatus.INJECTED else EXIT_REJECTED
