"""`infusiond demo --hl7-out URL --piv-listen URL` against the simulated EHR: the demo's
titration is charted and reported, and an order sent with `infusiond sim ehr --order` waits
for a confirmation instead of moving the pump."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path

import aiomqtt
import pytest

from daemon.demo import running_demo
from sim_devices.ehr import EhrSimulator
from tests.e2e.harness import command, dose

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
_n = itertools.count(1)


async def test_demo_with_hl7_out_and_piv_listen(tmp_path: Path) -> None:
    ehr = EhrSimulator()
    await ehr.start()
    try:
        async with running_demo(
            data_dir=tmp_path / "d",
            hl7_out=f"mllp://127.0.0.1:{ehr.port}",
            piv_listen="mllp://127.0.0.1:0",
        ) as (endpoints, _gateway):
            assert endpoints.piv_url is not None
            host, _, port = endpoints.broker_url.removeprefix("mqtt://").rpartition(":")
            async with aiomqtt.Client(
                host, int(port), protocol=aiomqtt.ProtocolVersion.V311, identifier=f"ihe-{next(_n)}"
            ) as client:
                await client.subscribe("infusiond/demo/pump/pump-1/command/result", qos=1)
                titrate = command(dose=dose(0.06))
                await client.publish(
                    "infusiond/demo/pump/pump-1/command", json.dumps(titrate), qos=1
                )
                async with asyncio.timeout(20):
                    await ehr.wait_for(
                        lambda r: any(
                            m.profile == "IPEC" and m.value("command_id") == titrate["id"]
                            for m in r
                        )
                    )
                    await ehr.wait_for(
                        lambda r: any(
                            m.profile == "DEC" and m.value("MDC_FLOW_FLUID_PUMP") == "63" for m in r
                        )
                    )
                spec = (
                    "id=ORD-9,pump=pump-1,drug=norepinephrine,concentration=4 ug/mL,"
                    "dose=0.07 ug/kg/min,by=demo-nurse"
                )
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "daemon.cli",
                    "sim",
                    "ehr",
                    "--piv",
                    endpoints.piv_url,
                    "--order",
                    spec,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                async with asyncio.timeout(30):
                    out, err = await proc.communicate()
                assert proc.returncode == 0, err
                assert out.decode().strip() == "RRG^O16 AA"
                async with asyncio.timeout(20):
                    async for message in client.messages:
                        data = json.loads(message.payload)["data"]  # type: ignore[arg-type]
                        if data.get("source") == "piv":
                            break
                assert (data["phase"], data["order_id"]) == ("needs_confirmation", "ORD-9")
    finally:
        await ehr.stop()
