"""The whole gateway with ``[hl7_out]`` against the simulated EHR: real pump simulators, a real
mosquitto, a real journal file. A titration over MQTT is charted (DEC) and reported (IPEC), an
alarm raised and cleared at the pump reaches the alarm manager (ACM), and an EHR outage of
seconds loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.base.config import Config
from daemon.base.config_sections import Hl7OutConfig, PivConfig
from daemon.core.gateway import Gateway
from drivers.hl7.ack import AckCode
from drivers.hl7.piv import build_rgv
from sim_devices.clock import SimClock
from sim_devices.ehr import EhrSimulator, Received, send_order
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_server import NewEraSimulator
from tests.e2e.harness import bedside_config, command, dose
from tests.support.procs import Mosquitto

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

WAIT_S = 20.0


@dataclass
class Ward:
    gateway: Gateway
    modbus: ModbusPumpSimulator
    ehr: EhrSimulator
    client: aiomqtt.Client
    config: Config

    async def send(self, pump_id: str, body: dict[str, object]) -> None:
        topic = f"infusiond/{self.config.gateway_id}/pump/{pump_id}/command"
        await self.client.publish(topic, json.dumps(body).encode(), qos=1)


@contextlib.asynccontextmanager
async def running_ward(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Ward]:
    clock = SimClock()
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))], clock=clock
    )
    newera = NewEraSimulator(
        [NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True, reset_alarm=False)],
        clock=clock,
    )
    ehr = EhrSimulator()
    await ehr.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(ehr.stop)
        served = await stack.enter_async_context(modbus.serving("tcp://127.0.0.1:0"))
        await stack.enter_async_context(newera.serving("tcp://127.0.0.1:0"))
        config = bedside_config(
            data_dir=tmp_path / "data",
            broker_url=broker.url,
            modbus_url=served.url,
            newera_url=f"socket://127.0.0.1:{newera.port}",
        ).model_copy(
            update={
                "hl7_out": Hl7OutConfig(
                    url=f"mllp://127.0.0.1:{ehr.port}", dec_period_s=3600, ack_timeout_s=2
                ),
                "piv": PivConfig(listen="mllp://127.0.0.1:0"),
            }
        )
        client = await stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5)
        )
        gateway = Gateway(config)
        async with asyncio.TaskGroup() as tg:
            gw_task = tg.create_task(gateway.run(), name="gateway")
            try:
                async with asyncio.timeout(WAIT_S):
                    await gateway.ready.wait()
                yield Ward(gateway, modbus, ehr, client, config)
            finally:
                gateway.stop()
                async with asyncio.timeout(WAIT_S):
                    await asyncio.shield(gw_task)


def ipec_for(command_id: str) -> object:
    return lambda r: any(m.profile == "IPEC" and m.value("command_id") == command_id for m in r)


def acm(received: list[Received], phase: str) -> list[Received]:
    return [
        m
        for m in received
        if m.profile == "ACM"
        and m.value("MDC_ATTR_EVENT_PHASE") == phase
        and m.subject == "MDC_EVT_ALARM"
        and m.observations[0].value.startswith("low_battery^")
    ]


async def test_titration_alarm_and_outage_reach_the_ehr(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """DEC and IPEC after a titration; ACM raised then cleared with one identity; an outage
    of seconds loses nothing and sends nothing twice."""
    async with running_ward(tmp_path, mosquitto) as ward:
        ehr = ward.ehr
        titrate = command(dose=dose(0.06))
        await ward.send("pump-1", titrate)
        async with asyncio.timeout(WAIT_S):
            await ehr.wait_for(ipec_for(titrate["id"]))  # type: ignore[arg-type]
            await ehr.wait_for(
                lambda r: any(
                    m.profile == "DEC" and m.value("MDC_FLOW_FLUID_PUMP") == "63" for m in r
                )
            )
        ipec = next(m for m in ehr.of("IPEC") if m.value("command_id") == titrate["id"])
        assert ipec.subject == "rate_changed"
        assert (ipec.value("rate_from"), ipec.value("MDC_FLOW_FLUID_PUMP")) == ("52.5", "63")
        assert b"|nurse-1" in ipec.raw  # OBX-16: the clinician who asked for the change

        ward.modbus.inject("low_battery", unit=1)
        async with asyncio.timeout(WAIT_S):
            await ehr.wait_for(lambda r: bool(acm(r, "start")))
        ward.modbus.clear("low_battery", unit=1)
        async with asyncio.timeout(WAIT_S):
            await ehr.wait_for(lambda r: bool(acm(r, "end")))
        (raised,), (cleared,) = acm(ehr.received, "start"), acm(ehr.received, "end")
        assert raised.filler == cleared.filler
        assert raised.filler.startswith("pump-1:low_battery:")

        out = ward.gateway.hl7_out
        assert out is not None
        await ehr.stop()
        back = command(dose=dose(0.05))
        await ward.send("pump-1", back)
        await asyncio.sleep(3.0)  # the outage: several seconds with the EHR down
        assert not any(m.value("command_id") == back["id"] for m in ehr.received)
        await ehr.start()
        async with asyncio.timeout(WAIT_S):
            await ehr.wait_for(ipec_for(back["id"]))  # type: ignore[arg-type]
            await out.drained.wait()
    numbers = sorted(int(re.sub(r"^.*-", "", m.control_id)) for m in ehr.received)
    assert numbers == list(range(1, len(numbers) + 1))  # no control id lost, none twice
    assert ehr.duplicates == 0 or out.stats.resent > 0


def order(order_id: str, value: str, *, pump_id: str = "pump-1") -> bytes:
    return build_rgv(
        control_id=f"msg-{order_id}",
        now=datetime.now(UTC),
        order_id=order_id,
        pump_id=pump_id,
        drug="norepinephrine",
        concentration=("4", "ug/mL"),
        dose=(value, "ug/kg/min"),
        ordered_by="dr-2",
        diluent="D5W",
        weight_kg="70",
        patient_id="MRN-1",
        bed="bed-1",
    )


async def results(client: aiomqtt.Client, want: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        async for message in client.messages:
            got.append(json.loads(message.payload)["data"])  # type: ignore[arg-type]
            if len(got) >= want:
                return got
    return got


async def test_piv_order_is_pending_until_confirmed_and_hard_limit_order_never_runs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """An order is answered AA and published as needs_confirmation (source piv, order id,
    the command); the pump does not move until a clinician confirms, then it is applied and
    charted. An order above the hard limit is AR with its rule id; an unknown pump is AE."""
    async with running_ward(tmp_path, mosquitto) as ward:
        piv = ward.gateway.piv
        assert piv is not None
        topic = f"infusiond/{ward.config.gateway_id}/pump/+/command/result"
        await ward.client.subscribe(topic, qos=1)

        code, text, raw = await send_order("127.0.0.1", piv.port, order("ORD-1", "0.06"))
        assert (code, text) == (AckCode.AA, "")
        assert b"RRG^O16^RRG_O16" in raw
        assert b"|msg-ORD-1" in raw  # MSA-2 names the order message
        (pending,) = await results(ward.client, 1)
        assert pending["phase"] == "needs_confirmation"
        assert (pending["source"], pending["order_id"]) == ("piv", "ORD-1")
        # the order is for the running infusion: a titration, as an MQTT set_dose would be
        assert pending["command"]["action"] == "set_dose"
        assert pending["command"]["dose"] == {"value": 0.06, "unit": "ug/kg/min"}
        assert ward.modbus.pump(1).rate == Decimal("52.5")  # nothing reached the pump

        confirm = {
            **pending["command"],
            "confirm": {"token": pending["confirm_token"], "reason": "order ORD-1 checked"},
        }
        await ward.send("pump-1", confirm)
        phases = [r["phase"] for r in await results(ward.client, 2)]
        assert phases == ["accepted", "applied"]
        assert ward.modbus.pump(1).rate == Decimal("63.00")
        async with asyncio.timeout(WAIT_S):
            await ward.ehr.wait_for(ipec_for(pending["id"]))  # type: ignore[arg-type]

        code, text, _ = await send_order("127.0.0.1", piv.port, order("ORD-2", "5"))
        assert code is AckCode.AR
        assert "HARD_MAX" in text
        (refused,) = await results(ward.client, 1)
        assert (refused["phase"], refused["order_id"]) == ("rejected", "ORD-2")
        assert ward.modbus.pump(1).rate == Decimal("63.00")

        code, text, _ = await send_order(
            "127.0.0.1", piv.port, order("ORD-3", "0.06", pump_id="pump-9")
        )
        assert code is AckCode.AE
        assert "pump-9" in text


async def test_piv_order_needing_a_confirmation_is_overridden_at_the_bedside_and_reported(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """An order below the usual minimum gets a confirm-level verdict: still pending (AA), like
    an accept-level one; the clinician's confirmation with a reason overrides it, the pump
    follows, and the EHR receives the override (IPEC) with who and why."""
    async with running_ward(tmp_path, mosquitto) as ward:
        piv = ward.gateway.piv
        assert piv is not None
        topic = f"infusiond/{ward.config.gateway_id}/pump/+/command/result"
        await ward.client.subscribe(topic, qos=1)
        for order_id, value, expected_verdict in (
            ("A", "0.06", "accept"),
            ("B", "0.005", "confirm"),
        ):
            code, _, _ = await send_order("127.0.0.1", piv.port, order(order_id, value))
            assert code is AckCode.AA
            (pending,) = await results(ward.client, 1)
            assert pending["verdict"]["verdict"] == expected_verdict, pending
            confirm = {
                **pending["command"],
                "confirm": {"token": pending["confirm_token"], "reason": f"order {order_id} ok"},
            }
            await ward.send("pump-1", confirm)
            assert [r["phase"] for r in await results(ward.client, 2)] == ["accepted", "applied"]
        assert ward.modbus.pump(1).rate == Decimal("5.25")
        async with asyncio.timeout(WAIT_S):
            await ward.ehr.wait_for(lambda r: any(m.subject == "override_accepted" for m in r))
        override = next(m for m in ward.ehr.received if m.subject == "override_accepted")
        assert override.value("reason") == "order B ok"
        assert override.value("command_id") == "piv-B"
        assert b"|dr-2" in override.raw
