"""A New Era pump that starts withdrawing, seen through a real gateway, broker and simulator.

The reported fault: a pump answering ``W`` crash-looped its channel (KeyError in the alarm
priority table) while the retained state kept saying ``infusing`` with a fresh ``last_poll``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import Message, bedside, probe, running_gateway, simulators
from tests.support.procs import Mosquitto


def alarm_event(kind: str, code: str) -> object:
    def predicate(m: Message) -> bool:
        return (
            m.topic.endswith("pump/pump-2/event")
            and m.data["type"] == kind
            and m.data.get("alarm", {}).get("code") == code
        )

    return predicate


def state_where(status: str, *, withdrawing: bool) -> object:
    def predicate(m: Message) -> bool:
        if not m.topic.endswith("pump/pump-2/state"):
            return False
        codes = [a["code"] for a in m.data["alarms"]]
        return bool(m.data["status"] == status and ("withdrawing" in codes) == withdrawing)

    return predicate


@pytest.mark.slow
@pytest.mark.asyncio
async def test_withdrawing_pump_is_an_alarm_not_infusing_and_its_channel_keeps_polling(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The pump turns to withdrawing at the keypad: alarm_raised 'withdrawing' (high), the
    state says status 'alarm'; polling goes on, so when it runs forward again the alarm is
    cleared and the state says infusing -- with no restart of anything."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            pump = bench.newera.pumps[0]
            mark = len(p.messages)
            pump.direction = "WDR"
            pump.front_panel_run()
            raised = await p.wait_for(alarm_event("alarm_raised", "withdrawing"), after=mark)
            assert raised.data["alarm"]["priority"] == "high"
            state = await p.wait_for(state_where("alarm", withdrawing=True), after=mark)
            assert state.data["connection"] == "online"
            assert gateway.channels["pump-2"].connection.value == "online"

            mark = len(p.messages)
            pump.direction = "INF"
            pump.front_panel_run()
            await p.wait_for(alarm_event("alarm_cleared", "withdrawing"), after=mark)
            await p.wait_for(state_where("infusing", withdrawing=False), after=mark)
