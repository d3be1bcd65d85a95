"""End to end: an MQTT titration of a PHD ULTRA pump through a real broker and gateway.

The gateway polls the pump over TCP (the chain simulator), the gate judges each command with
the pump's capabilities (from its syringe), and the result is applied only on read-back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sim_devices.phd_server import PhdPumpSetup, PhdSimulator
from tests.reliability.harness import (
    CLINICIAN,
    GW,
    NE_RATE,
    NE_RATE_UP,
    Message,
    command,
    probe,
    running_gateway,
)
from tests.support.procs import Mosquitto

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def phd_bedside(url: str, broker_url: str, data_dir: Path) -> dict[str, Any]:
    return {
        "gateway_id": GW,
        "data_dir": str(data_dir),
        "log_level": "info",
        "broker": {"url": broker_url},
        "control": {"enabled": True, "allowlist": [CLINICIAN]},
        "pumps": [
            {
                "id": "pump-phd",
                "driver": "phd",
                "url": url,
                "address": 3,
                "syringe_diameter_mm": 26.59,
                "drug": "norepinephrine",
                "concentration": {"value": 4, "unit": "ug/mL"},
                "bed": "bed-1",
                "diluent": "D5W",
                "route": "central",
                "library_profile": "adult-icu",
                "weight_kg": 70,
                "poll_period_s": 0.5,
                "publish_every_s": 2.0,
            }
        ],
    }


def phd_state(m: Message) -> bool:
    return m.topic.endswith("pump/pump-phd/state") and m.data.get("connection") == "online"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_mqtt_titration_of_a_phd_pump_is_gated_applied_and_read_back(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """0.05 -> 0.06 ug/kg/min of norepinephrine on pump 3 of a PHD chain: applied with the
    pump's read-back; a rate beyond the syringe's range is rejected by the gate and never
    reaches the pump; the published state names the phd driver and fits its schema."""
    sim = PhdSimulator([PhdPumpSetup(3, rate_ml_h=NE_RATE, running=True)], speed=1.0)
    pump = sim.pumps[3]
    async with sim.serving("tcp://127.0.0.1:0"):
        cfg = phd_bedside(sim.url, mosquitto.url, tmp_path / "data")
        async with running_gateway(cfg), probe(mosquitto.url) as p:
            state = await p.wait_for(phd_state)
            assert state.data["device"]["driver"] == "phd"
            assert state.data["device"]["model"] == "PHD ULTRA"
            schema = (SCHEMAS / "infusiond.pump.state-1.json").read_text()
            validator = Draft202012Validator(json.loads(schema))
            assert not list(validator.iter_errors(state.json))

            up = command()
            await p.send("pump-phd", up)
            done = await p.result(up["id"], "applied")
            assert done["readback"]["rate"]["value"] == float(NE_RATE_UP)
            assert pump.rate_ml_h == NE_RATE_UP

            writes = len(pump.writes)
            too_fast = command(rate={"value": 7000.0, "unit": "mL/h"})
            await p.send("pump-phd", too_fast)
            refused = await p.result(too_fast["id"], "rejected")
            rules = {f["rule"] for f in refused["verdict"]["findings"]}
            assert "PUMP_RANGE" in rules
            assert pump.rate_ml_h == NE_RATE_UP
            assert pump.writes[writes:] == []  # nothing reached the pump
            assert pump.writes == ["3:irate 63.00 ml/hr"]
