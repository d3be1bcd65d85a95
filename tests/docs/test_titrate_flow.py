"""docs/examples/titrate.py against a real mosquitto and a stand-in gateway.

The stand-in answers with the contract's own builders (daemon.base.results,
daemon.base.envelope), and every answer is checked against the result schema, so the example is
exercised on the exact documented message shapes: accepted -> applied, and needs_confirmation ->
confirmed re-send.
(The real gate and service are tested with the daemon; this test is about the example client.)
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.quantities import Quantity
from daemon.base.results import CommandResult, Readback, VerdictJson
from daemon.mqtt.command_parse import Command, parse_command
from drivers.clock import utc_now
from tests.docs.docs_text import DOCS
from tests.docs.test_payload_examples import validator
from tests.support.procs import Mosquitto

EXAMPLE = DOCS / "examples" / "titrate.py"
TOKEN = "tok-1"


@dataclass
class StandIn:
    """Answers commands like the gateway would for the demo bedside."""

    port: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    commands: list[Command] = field(default_factory=list)
    correlation: list[bytes | None] = field(default_factory=list)

    def answers(self, pump: str, cmd: Command) -> list[CommandResult]:
        assert cmd.dose is not None
        value = cmd.dose.value
        rate = value * 70 * 60 / 4 if pump == "pump-1" else value * 60 / 0.2
        verdict = {
            "verdict": "accept",
            "rate": {"value": round(rate, 2), "unit": "mL/h"},
            "dose": {"value": value, "unit": cmd.dose.unit},
            "findings": [],
        }
        if pump == "pump-2" and value > 0.03 and cmd.confirm is None:
            verdict["verdict"] = "confirm"
            verdict["findings"] = [
                {"rule": "SOFT_MAX", "severity": "confirm", "message": "above the usual maximum"}
            ]
            expires = utc_now() + timedelta(seconds=120)
            return [
                CommandResult.needs_confirmation(
                    cmd.id, verdict=VerdictJson(verdict), confirm_token=TOKEN, expires_at=expires
                )
            ]
        if cmd.confirm is not None:
            assert cmd.confirm.token == TOKEN
        readback = Readback("infusing", Quantity.from_json(verdict["rate"]), None)
        return [
            CommandResult.accepted(cmd.id, verdict=VerdictJson(verdict)),
            CommandResult.applied(cmd.id, readback=readback),
        ]

    async def serve(self) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.subscribe("infusiond/demo/pump/+/command", qos=1)
            self.ready.set()
            async for message in client.messages:
                pump = str(message.topic).split("/")[3]
                assert isinstance(message.payload, bytes)
                cmd = parse_command(message.payload, now=utc_now(), retained=message.retain)
                assert isinstance(cmd, Command), cmd
                self.commands.append(cmd)
                corr = getattr(message.properties, "CorrelationData", None)
                self.correlation.append(corr)
                for seq, data in enumerate(self.answers(pump, cmd), start=1):
                    body = envelope(
                        Kind.PUMP_COMMAND_RESULT,
                        gateway="demo",
                        session="test-session",
                        seq=seq,
                        ts=utc_now(),
                        data=data.to_json(),
                    )
                    assert not list(validator(Kind.PUMP_COMMAND_RESULT.schema).iter_errors(body))
                    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    if corr is not None:
                        props.CorrelationData = corr
                    await client.publish(
                        f"infusiond/demo/pump/{pump}/command/result",
                        encode(body),
                        qos=1,
                        properties=props,
                    )


async def run_example(mosquitto: Mosquitto, *args: str) -> tuple[int, str, StandIn]:
    stand_in = StandIn(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(stand_in.serve(), name="stand-in-gateway")
        await asyncio.wait_for(stand_in.ready.wait(), 10)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--broker",
            mosquitto.url,
            "--timeout",
            "20",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        server.cancel()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode(), stand_in


@pytest.mark.asyncio
async def test_titration_waits_for_applied(mosquitto: Mosquitto) -> None:
    """pump-1 to 0.06 ug/kg/min: the example prints accepted then applied and exits 0."""
    code, output, stand_in = await run_example(mosquitto, "--dose", "0.06")
    assert code == 0, output
    assert output.index(": accepted") < output.index(": applied")
    assert len(stand_in.commands) == 1
    cmd = stand_in.commands[0]
    assert cmd.action == "set_dose"
    assert cmd.to_json()["dose"] == {"value": 0.06, "unit": "ug/kg/min"}
    assert stand_in.correlation == [cmd.id.encode()]


@pytest.mark.asyncio
async def test_confirmation_is_resent_with_a_new_id_token_and_reason(mosquitto: Mosquitto) -> None:
    """needs_confirmation + --reason: the same request again, new id, confirm {token, reason}."""
    reason = "MAP 63, escalation agreed with the ICU consultant"
    code, output, stand_in = await run_example(
        mosquitto, "--pump", "pump-2", "--dose", "0.04", "--unit", "[USP'U]/min", "--reason", reason
    )
    assert code == 0, output
    first, second = stand_in.commands
    assert first.confirm is None
    assert second.confirm is not None
    assert (second.confirm.token, second.confirm.reason) == (TOKEN, reason)
    assert second.id != first.id
    assert (second.action, second.dose) == (first.action, first.dose)


@pytest.mark.asyncio
async def test_confirmation_without_reason_stops_with_exit_3(mosquitto: Mosquitto) -> None:
    """Without --reason nothing is re-sent; the example says a confirmation is needed."""
    code, output, stand_in = await run_example(
        mosquitto, "--pump", "pump-2", "--dose", "0.04", "--unit", "[USP'U]/min"
    )
    assert code == 3, output
    assert "confirmation needed" in output
    assert len(stand_in.commands) == 1
