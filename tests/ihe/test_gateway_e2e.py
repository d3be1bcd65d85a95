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
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest

from daemon.config import Config, Hl7OutConfig
from daemon.gateway import Gateway
from sim_devices.clock import SimClock
from sim_devices.ehr import EhrSimulator, Received
from sim_devices.modbus_pump import PumpConfig as ModbusSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_pump import PumpSetup as NewEraSetup
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
        [ModbusSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))], clock=clock
    )
    newera = NewEraSimulator(
        [NewEraSetup(address=0, rate_ml_h=Decimal("9.0"), running=True, reset_alarm=False)],
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
                )
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
        and m.observations[0].ident == "low_battery"
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
        assert ipec.subject == "MDC_EVT_PUMP_RATE_CHANGE"
        assert (ipec.value("rate_from"), ipec.value("MDC_FLOW_FLUID_PUMP")) == ("52.5", "63")

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
