"""`infusiond demo --hl7-out URL --piv-listen URL` against the simulated EHR: the demo's
titration is charted and reported, and an order sent with `infusiond sim ehr --order` waits
for a confirmation instead of moving the pump."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from daemon.demo.bedside import running_demo
from daemon.ihe.samples import sample_messages
from drivers.hl7.ack import AckCode, parse_ack
from drivers.hl7.mllp import MllpDecoder, MllpFrame
from sim_devices.ehr import EhrSimulator
from tests.e2e.harness import command, dose
from tests.support.procs import wait_for_line

pytestmark = pytest.mark.slow
_n = itertools.count(1)


@pytest.mark.asyncio
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


def test_demo_ehr_sim_prints_one_line_per_message(tmp_path: Path) -> None:
    """`infusiond demo --ehr-sim`: the demo runs its own EHR simulator, sends to it, and the
    simulator prints each message: pump-1's DEC with its rate shows up on stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "demo", "--ehr-sim", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        banner = wait_for_line(proc, b"Ctrl-C stops everything.", 60, proc.stdout)
        assert b"EHR         IHE PCD DEC/IPEC/ACM over MLLP -> mllp://127.0.0.1:" in banner
        seen = banner  # the read that ended the banner may already hold the first DECs
        if b"MDC_FLOW_FLUID_PUMP=52.5" not in seen:
            seen += wait_for_line(proc, b"MDC_FLOW_FLUID_PUMP=52.5", 30, proc.stdout)
        (line,) = [x for x in seen.splitlines() if b"MDC_FLOW_FLUID_PUMP=52.5" in x]
        assert re.match(rb"DEC \S+ bed-1 MDC_DEV_PUMP_INFUS_VMD ", line), seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.mark.asyncio
async def test_sim_ehr_cli_acks_prints_and_records(tmp_path: Path) -> None:
    """`infusiond sim ehr --listen URL --json FILE`: AA for each message, one line on stdout,
    one JSON record in FILE."""
    record = tmp_path / "ehr.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.cli",
        "sim",
        "ehr",
        "--listen",
        "mllp://127.0.0.1:0",
        "--json",
        str(record),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            banner = (await proc.stdout.readline()).decode()
        port = int(banner.rsplit(":", 1)[1])
        payload = sample_messages()["acm-raised"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MllpFrame(payload).serialize())
        decoder = MllpDecoder()
        async with asyncio.timeout(10):
            frames: list[MllpFrame] = []
            while not frames:
                chunk = await reader.read(4096)
                frames = [f for f in decoder.feed(chunk) if isinstance(f, MllpFrame)]
            line = (await proc.stdout.readline()).decode()
        writer.close()
        ack = parse_ack(frames[0].payload)
        assert (ack.code, ack.control_id) == (AckCode.AA, "3f9a-105")
        assert line.startswith("ACM 3f9a-105 MRN-0042 MDC_EVT_ALARM")
        assert json.loads(record.read_text().splitlines()[0])["profile"] == "ACM"
    finally:
        proc.terminate()
        await proc.wait()
