"""``infusiond demo``'s broker as users meet it: the guide's v5 example titrates unchanged."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from daemon.demo import running_demo
from daemon.demo_broker import mosquitto_binary

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "titrate.py"

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


@pytest.mark.asyncio
async def test_the_guides_v5_example_titrates_pump_1_against_the_demo(tmp_path: Path) -> None:
    """docs/examples/titrate.py (MQTT v5, correlation data) runs unchanged against the demo's
    broker: pump-1 goes to 0.06 ug/kg/min, answered accepted then applied, exit status 0."""
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
