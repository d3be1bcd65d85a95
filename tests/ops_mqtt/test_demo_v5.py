"""``infusiond demo``'s broker as users meet it: the guide's v5 example titrates unchanged."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.demo.bedside import running_demo
from daemon.demo.broker import mosquitto_binary

V5 = aiomqtt.ProtocolVersion.V5
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "titrate.py"

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


@pytest.mark.asyncio
async def test_the_guides_v5_example_titrates_pump_1_against_the_demo(tmp_path: Path) -> None:
    """docs/examples/titrate.py (MQTT v5, correlation data) runs unchanged against the demo's
    broker: pump-1 goes to 0.06 ug/kg/min, answered accepted then applied, exit status 0; the
    demo's GET /metrics then counts one applied command."""
    async with running_demo(data_dir=tmp_path / "demo") as (endpoints, gateway):
        example = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            *("--broker", endpoints.broker_url, "--dose", "0.06", "--timeout", "20"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            out, _ = await example.communicate()
        said = out.decode()
        assert example.returncode == 0, said
        assert ": accepted" in said
        assert ": applied" in said
        assert gateway.channels["pump-1"].status is not None
        assert float(gateway.channels["pump-1"].status.rate_ml_h) == 63.0
        assert endpoints.dashboard_url is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(endpoints.dashboard_url + "metrics") as reply,
        ):
            assert reply.status == 200
            text = await reply.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("infusiond_commands_total", (("phase", "applied"),))] == 1
    assert samples[("infusiond_polls_total", (("outcome", "ok"), ("pump", "pump-1")))] > 0


@pytest.mark.asyncio
async def test_mosquitto_sub_sees_the_demos_live_states_unflagged(tmp_path: Path) -> None:
    """On the demo's own traffic: the stored bed-1 state arrives flagged retained (1), the next
    live publications of that retained topic arrive unflagged (0)."""
    async with running_demo(data_dir=tmp_path / "demo") as (endpoints, _gateway):
        port = endpoints.broker_url.rsplit(":", 1)[1]
        topic = "infusiond/demo/vitals/bed-1/state"
        async with aiomqtt.Client("127.0.0.1", int(port), protocol=V5, identifier="first") as c:
            await c.subscribe(topic, qos=1)  # the broker holds a bed-1 state once this answers
            async with asyncio.timeout(30):
                await anext(c.messages)
        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            *("-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1"),
            *("-t", topic, "-C", "3", "-F", "%r"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(30):
            out, _ = await sub.communicate()
    assert out.decode().split() == ["1", "0", "0"]
