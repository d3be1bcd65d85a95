"""Titrate one pump through infusiond and wait until the pump has applied the change.

    python docs/examples/titrate.py --dose 0.06              # the demo: pump-1 -> 63.0 mL/h
    python docs/examples/titrate.py --pump pump-2 --dose 0.04 --unit "[USP'U]/min" \\
        --reason "MAP 63, escalation agreed with the ICU consultant"

Subscribes to the pump's ``command/result`` topic, sends an ``infusiond.pump.command/1``
``set_dose`` (its id also as MQTT v5 correlation data) and prints every result phase for that
id. When the gateway answers ``needs_confirmation`` and ``--reason`` was given, it re-sends the
request once with ``confirm`` {token, reason}. Exit status: 0 applied, 1 rejected, failed or
uncertain, 2 no final answer in time, 3 confirmation needed but no ``--reason``.
Requires aiomqtt (installed with infusiond). See docs/integration-guide.md.
"""
# ruff: noqa: T201 - an example command-line client prints its progress

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

FINAL = {"applied": 0, "rejected": 1, "failed": 1, "uncertain": 1}


def command(args: argparse.Namespace, confirm: dict[str, str] | None = None) -> dict[str, Any]:
    """A set_dose command with a fresh id (a repeated id would be answered ``duplicate``)."""
    body: dict[str, Any] = {
        "schema": "infusiond.pump.command/1",
        "id": f"titrate-{uuid.uuid4().hex[:12]}",
        "issued_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ttl_s": 30,
        "by": {"clinician": args.clinician},
        "action": "set_dose",
        "dose": {"value": args.dose, "unit": args.unit},
    }
    if confirm is not None:
        body["confirm"] = confirm
    return body


async def send(client: aiomqtt.Client, topic: str, body: dict[str, Any]) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = body["id"].encode()
    await client.publish(topic, json.dumps(body), qos=1, properties=props)
    print(f"sent {body['id']}: {body['action']} {body['dose']['value']} {body['dose']['unit']}")


async def titrate(args: argparse.Namespace) -> int:
    url = urlsplit(args.broker)
    root = f"infusiond/{args.gateway}"
    async with aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or 1883,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        pump = f"{root}/pump/{args.pump}"
        await client.subscribe(f"{pump}/command/result", qos=1)  # before sending: no race
        body = command(args)
        await send(client, f"{pump}/command", body)
        async with asyncio.timeout(args.timeout):
            async for message in client.messages:
                result = json.loads(message.payload)["data"]
                if result["id"] != body["id"]:
                    continue  # another client's command
                phase = result["phase"]
                print(f"{result['id']}: {phase}", json.dumps(result.get("verdict", {})))
                if phase == "needs_confirmation":
                    if not args.reason:
                        print("confirmation needed: re-run with --reason '...'", file=sys.stderr)
                        return 3
                    confirm = {"token": result["confirm_token"], "reason": args.reason}
                    body = command(args, confirm)
                    await send(client, f"{pump}/command", body)
                elif phase == "duplicate":
                    print(f"already executed: {result['first']}")
                    return 0 if result["first"]["phase"] == "applied" else 1
                elif phase in FINAL:
                    if "error" in result:
                        print(f"error {result['error']['code']}: {result['error']['message']}")
                    return FINAL[phase]
    return 2  # the subscription ended without a final answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--gateway", default="demo")
    parser.add_argument("--pump", default="pump-1")
    parser.add_argument("--dose", type=float, required=True)
    parser.add_argument("--unit", default="ug/kg/min")
    parser.add_argument("--clinician", default="dr-a")
    parser.add_argument("--reason", help="confirmation reason, if the library asks for one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    args = parser.parse_args()
    try:
        return asyncio.run(titrate(args))
    except TimeoutError:
        print(f"no final answer within {args.timeout:g} s", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
