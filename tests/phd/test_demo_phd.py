"""``infusiond demo --phd``: the demo bedside gains pump-phd, a PHD ULTRA on its own chain."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from daemon.demo.bedside import banner, running_demo
from tests.reliability.harness import Message, probe
from tests.support.procs import Mosquitto


def phd_online(m: Message) -> bool:
    return m.topic == "infusiond/demo/pump/pump-phd/state" and m.data["connection"] == "online"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_demo_with_phd_polls_pump_phd_and_prints_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """With phd=True the demo serves a PHD chain, the gateway publishes pump-phd online at
    52.5 mL/h with driver 'phd', and the banner names its URL and address."""
    async with running_demo(data_dir=tmp_path / "d", broker=mosquitto.url, phd=True) as (ep, _):
        async with probe(mosquitto.url, "infusiond/demo/#") as p:
            state = await p.wait_for(phd_online)
        assert state.data["rate"] == {"value": 52.5, "unit": "mL/h"}
        assert state.data["device"]["driver"] == "phd"
        out = io.StringIO()
        banner(ep, 2, out)
    assert ep.phd_url is not None
    assert f"pump-phd    PHD ULTRA {ep.phd_url} address 1" in out.getvalue()
