"""The demo serves the history API from its own journal: a titration made over MQTT is in
/api/events (with its command id) and in /api/history (the new rate and dose) at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from daemon.demo import running_demo
from tests.e2e.harness import command, dose
from tests.support.procs import Mosquitto
from tests.web.conftest import check_api_answer

pytestmark = pytest.mark.slow


@pytest.mark.asyncio
async def test_demo_history_api_shows_a_titration(
    tmp_path: Path, ws_broker: tuple[Mosquitto, int]
) -> None:
    """Titrate pump-1 over MQTT; /api/events has its rate_changed with the command id, and
    /api/history's pump-1 series ends at 63 mL/h (0.06 ug/kg/min)."""
    broker, ws_port = ws_broker
    async with running_demo(
        data_dir=tmp_path / "d", broker=broker.url, broker_ws=f"ws://127.0.0.1:{ws_port}/"
    ) as (endpoints, _gateway):
        assert endpoints.dashboard_url is not None
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="api-test") as client:
            await client.subscribe("infusiond/demo/pump/pump-1/command/result", qos=1)
            titrate = command(dose=dose(0.06))
            await client.publish("infusiond/demo/pump/pump-1/command", json.dumps(titrate), qos=1)
            async with asyncio.timeout(20):
                async for message in client.messages:
                    if json.loads(message.payload)["data"]["phase"] == "applied":  # type: ignore[arg-type]
                        break
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{endpoints.dashboard_url}api/events?pump=pump-1") as resp:
                assert resp.status == 200
                answer = await resp.json()
                check_api_answer(resp.status, answer)
                events = answer["data"]["events"]
            async with session.get(f"{endpoints.dashboard_url}api/history?pump=pump-1") as resp:
                assert resp.status == 200
                answer = await resp.json()
                check_api_answer(resp.status, answer)
                series = answer["data"]["pumps"]["pump-1"]["points"]
            async with session.get(f"{endpoints.dashboard_url}config.json") as resp:
                config = await resp.json()
    changes = [e["data"] for e in events if e["data"]["type"] == "rate_changed"]
    assert changes[-1]["command_id"] == titrate["id"]
    assert changes[-1]["to"]["rate"] == {"value": 63.0, "unit": "mL/h"}
    assert series[-1]["rate"] == {"value": 63.0, "unit": "mL/h"}
    assert series[-1]["dose"] == {"value": 0.06, "unit": "ug/kg/min"}
    assert config["api"] == {"events": "api/events", "history": "api/history"}
