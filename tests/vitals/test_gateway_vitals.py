"""The whole bedside (real gateway, real monitor simulator, mosquitto): a rogue MLLP peer cannot
make the published vitals or the dose checks run on a spoofed, future-stamped MAP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.hl7 import Ack, AckCode, Parameter, build_oru
from tests.e2e.harness import Message, command, dose, running_bedside, validate, vitals_url
from tests.support.procs import Mosquitto
from tests.vitals.mllp_peer import send_one

WAIT_S = 15.0


async def _send_one(url: str, payload: bytes) -> Ack:
    """One framed message on a fresh connection; its ACK."""
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    return await send_one(host, int(port), payload, timeout_s=WAIT_S)


def _spoof(ahead_s: float, control_id: str) -> bytes:
    stamp = datetime.now(UTC) + timedelta(seconds=ahead_s)
    return build_oru(
        control_id=control_id,
        sent_at=stamp,
        values={Parameter.MAP: (Decimal(50), stamp)},
        bed="bed-1",
        sending_application="ROGUE",
    )


def _map_of(message: Message) -> float | None:
    reading = message.json()["data"]["map"]
    return None if reading is None else float(reading["value"])


@pytest.mark.asyncio
async def test_spoofed_future_map_neither_pins_vitals_nor_reaches_the_dose_check(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """MAP 50 stamped 290 s ahead is AE'd and never published; MAP 50 stamped 50 s ahead is
    accepted, but the monitor's next reading replaces it on vitals/bed-1/state, and a
    norepinephrine decrease is then checked against the monitor's MAP: accepted, no
    MAP_BELOW_TARGET (a spoofed MAP 50 would have asked for confirmation)."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        w = bed.watch
        topic = f"{w.root}/vitals/bed-1/state"
        await w.wait_for(lambda m: m.topic == topic and _map_of(m) is not None)
        url = vitals_url(bed.gateway)

        refused = await _send_one(url, _spoof(290, "rogue-1"))
        assert (refused.code, refused.control_id, refused.location) == (
            AckCode.AE,
            "rogue-1",
            "OBX^1^14",
        )
        assert "ahead of the gateway clock (limit 60 s)" in refused.text

        accepted = await _send_one(url, _spoof(50, "rogue-2"))
        assert accepted.code is AckCode.AA
        spoofed = await w.wait_for(lambda m: m.topic == topic and _map_of(m) == 50)
        before = w.messages[: w.messages.index(spoofed)]
        assert all(_map_of(m) != 50 for m in before if m.topic == topic)  # 290 s: never shown
        published = spoofed.json()
        validate(published)
        assert published["data"]["map"]["at"] <= published["ts"]  # held at receipt, not ahead
        replaced = await w.wait_for(
            lambda m: m.topic == topic and _map_of(m) not in (None, 50),
            after=w.messages.index(spoofed) + 1,
            timeout=WAIT_S,
        )
        monitor_map = _map_of(replaced)
        assert monitor_map is not None
        assert 65 <= monitor_map <= 85
        assert replaced.json()["data"]["source"] == "hl7:INFUSIOND-SIM"

        cmd = command(dose=dose(0.04))
        await w.send("pump-1", cmd)
        result = await w.result(cmd["id"], "accepted")
        rules = {f["rule"] for f in result["verdict"]["findings"]}
        assert "MAP_BELOW_TARGET" not in rules
        assert result["verdict"]["verdict"] == "accept"
