"""`infusiond run` with `[http] listen` serves the history API from its own journal (a real
process, a real mosquitto and a simulated Modbus pump); without `[http]` nothing listens."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.e2e.test_service_process import Daemon, write_config
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.slow


def listening_url(log: Path) -> str:
    """The URL the daemon logged when its HTTP server was bound (port 0: the OS chose)."""
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "http_listening":
                return str(record["url"])
    raise AssertionError(f"no http_listening in {log}")


@pytest.mark.asyncio
async def test_run_serves_the_api_when_http_is_configured(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """READY=1, then /api/events has the pump's connection event and /config.json names the
    gateway and the API."""
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))]
    )
    async with modbus.serving("tcp://127.0.0.1:0") as served:
        config = write_config(
            tmp_path / "gw.toml", broker=mosquitto, modbus_url=served.url, data_dir=tmp_path / "d"
        )
        config.write_text(config.read_text() + '\n[http]\nlisten = "127.0.0.1:0"\n')
        daemon = Daemon(config, tmp_path)
        try:
            await daemon.notification("READY")
            url = listening_url(tmp_path / "daemon.log")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}api/events?pump=pump-1") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                async with session.get(f"{url}config.json") as resp:
                    page_config = await resp.json()
        finally:
            daemon.close()
    assert body["gateway"] == "gw-proc"
    kinds = [e["data"]["type"] for e in body["data"]["events"]]
    assert "connection_changed" in kinds
    assert page_config == {
        "broker_ws_url": None,
        "gateway": "gw-proc",
        "api": {"events": "api/events", "history": "api/history"},
    }


@pytest.mark.asyncio
async def test_run_without_http_serves_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The HTTP server is off by default: no http_listening line."""
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))]
    )
    async with modbus.serving("tcp://127.0.0.1:0") as served:
        config = write_config(
            tmp_path / "gw.toml", broker=mosquitto, modbus_url=served.url, data_dir=tmp_path / "d"
        )
        daemon = Daemon(config, tmp_path)
        try:
            await daemon.notification("READY")
        finally:
            daemon.close()
    assert "http_listening" not in (tmp_path / "daemon.log").read_text()
