"""What watch draws at a given width: doses with whole units, whole pump ids, stale state marked,
recent lines across the terminal, a rejection listed once, history from the API taken in."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from daemon.display import human_quantity
from daemon.watch import WatchModel, render

NOW = datetime(2026, 12, 6, 12, 3, 9, tzinfo=UTC)
TS = "2026-12-06T12:00:09.000Z"
UNITS = ("ug/kg/min", "[USP'U]/min", "mg/h", "[USP'U]/h", "ng/kg/min", "mcg/min")


def envelope(kind: str, data: dict[str, Any], ts: str = TS) -> bytes:
    body = {"schema": f"infusiond.{kind}/1", "gateway": "demo", "session": "s", "seq": 9}
    return json.dumps(body | {"ts": ts, "data": data}).encode()


def pump_state(dose: float, unit: str, alarms: tuple[str, ...] = (), **extra: Any) -> bytes:
    data = {
        "connection": "online",
        "status": "infusing",
        "rate": {"value": 52.5, "unit": "mL/h"},
        "dose": {"value": dose, "unit": unit},
        "drug": "norepinephrine",
        "alarms": [{"code": a, "priority": "high", "since": TS} for a in alarms],
    }
    return envelope("pump.state", data | extra)


def screen(model: WatchModel, width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(render(model, NOW, width=width))
    return console.export_text().rstrip("\n").split("\n")


def online(model: WatchModel) -> WatchModel:
    model.apply("infusiond/demo/bridge/state", b'{"state":"online"}')
    return model


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=50, max_value=200),
    dose=st.floats(min_value=1e-4, max_value=5e3, allow_nan=False),
    unit=st.sampled_from(UNITS),
    alarms=st.lists(st.sampled_from(["occlusion", "air_in_line", "near_end"]), max_size=3),
)
def test_a_dose_is_shown_with_its_whole_unit_at_every_width(
    width: int, dose: float, unit: str, alarms: list[str]
) -> None:
    """From 50 to 200 columns the rounded dose and its full unit are on one line, every line
    fits the width, and the pump id is whole."""
    model = online(WatchModel())
    model.apply(
        "infusiond/demo/pump/icu-bed-12-pump-3/state", pump_state(dose, unit, tuple(alarms))
    )
    lines = screen(model, width)
    shown = human_quantity({"value": dose, "unit": unit})
    assert shown is not None
    assert any(shown in line for line in lines), (shown, lines)
    assert any("icu-bed-12-pump-3" in line for line in lines)
    assert max(len(line) for line in lines) <= width
    for code in alarms:
        assert code in "".join(lines)


def test_at_100_columns_every_column_is_there_and_the_unit_is_whole() -> None:
    """The issue's case: 0.066667 ug/kg/min at 100 columns reads 0.0667 ug/kg/min, with
    drug and rate."""
    model = online(WatchModel())
    model.apply("infusiond/demo/pump/pump-1/state", pump_state(0.066667, "ug/kg/min"))
    text = "\n".join(screen(model, 100))
    assert "0.0667 ug/kg/min" in text
    assert "norepinephrine" in text
    assert "52.50 mL/h" in text


def test_at_60_columns_other_columns_give_way_not_the_id_or_unit() -> None:
    """Long ids and units at 60 columns: drug and conn are left out, nothing is cut."""
    model = online(WatchModel())
    model.apply("infusiond/demo/pump/pump-vaso-long-7/state", pump_state(0.033333, "[USP'U]/min"))
    lines = screen(model, 60)
    row = next(line for line in lines if line.startswith("pump-vaso-long-7"))
    assert "0.0333 U/min" in row
    assert "…" not in "".join(lines[:4])
    assert "norepinephrine" not in row


def test_after_the_gateway_goes_offline_pumps_are_marked_last_known() -> None:
    """bridge/state offline: pumps keep their last values, marked (stale), with the time and
    age of the last state; never "online infusing"."""
    model = online(WatchModel())
    model.apply("infusiond/demo/pump/pump-1/state", pump_state(0.05, "ug/kg/min"))
    model.apply("infusiond/demo/bridge/state", b'{"state":"offline"}')
    text = "\n".join(screen(model, 100))
    row = next(line for line in text.split("\n") if line.startswith("pump-1"))
    assert "infusing (stale)" in row
    assert "online" not in row
    assert "0.05 ug/kg/min" in row
    assert "last known state, 12:00:09Z (3 min ago)" in text


def test_a_pump_offline_at_a_live_gateway_says_so_in_the_state_column() -> None:
    """Even at 60 columns (conn column left out) the state reads offline."""
    model = online(WatchModel())
    model.apply(
        "infusiond/demo/pump/pump-1/state",
        pump_state(0.05, "ug/kg/min", ("comm_timeout",), connection="offline"),
    )
    row = next(line for line in screen(model, 60) if line.startswith("pump-1"))
    assert "offline, was infusing" in row


def test_recent_lines_use_the_terminal_width() -> None:
    """At 160 columns a 100-character event line is shown whole on one line."""
    model = online(WatchModel())
    model.apply("infusiond/demo/pump/pump-1/state", pump_state(0.05, "ug/kg/min"))
    change = {
        "type": "rate_changed",
        "from": {"rate": {"value": 52.5, "unit": "mL/h"}, "dose": None},
        "to": {
            "rate": {"value": 63.0, "unit": "mL/h"},
            "dose": {"value": 0.06, "unit": "ug/kg/min"},
        },
        "command_id": "c-0123456789-abcdefghij-0123456789",
    }
    model.apply("infusiond/demo/pump/pump-with-a-long-name-1/event", envelope("pump.event", change))
    line = (
        "12:00:09 demo/pump-with-a-long-name-1 rate_changed 52.5 mL/h -> 63 mL/h (0.06 ug/kg/min)"
    )
    assert line in screen(model, 160)
    narrow = screen(model, 60)
    assert "(0.06 ug/kg/min)" in "\n".join(narrow)  # wrapped at a space, the unit whole


def test_a_rejected_command_is_listed_once() -> None:
    """The command_rejected event and the rejected result are one line."""
    model = online(WatchModel())
    result = {"id": "c-9", "phase": "rejected", "verdict": {"findings": [{"rule": "HARD_MAX"}]}}
    model.apply(
        "infusiond/demo/pump/pump-1/command/result", envelope("pump.command.result", result)
    )
    model.apply(
        "infusiond/demo/pump/pump-1/event",
        envelope("pump.event", {"type": "command_rejected", "command_id": "c-9"}),
    )
    assert [line for line in model.events if "c-9" in line] == [
        "12:00:09 demo/pump-1 command c-9 rejected HARD_MAX"
    ]


def test_history_from_the_api_fills_recent() -> None:
    """An /api/events answer becomes recent lines, oldest first, alarms by code."""
    model = WatchModel()
    document = {
        "schema": "infusiond.api.events/1",
        "gateway": "demo",
        "data": {
            "events": [
                {
                    "ts": "2026-12-06T11:50:00.000Z",
                    "pump_id": "pump-2",
                    "data": {
                        "type": "alarm_raised",
                        "alarm": {"code": "occlusion", "priority": "high", "since": TS},
                    },
                },
                {"ts": "2026-12-06T11:55:00.000Z", "pump_id": "pump-1", "data": {"type": "x"}},
            ]
        },
    }
    assert model.add_history(document) == 2
    assert list(model.events) == [
        "11:50:00 demo/pump-2 alarm_raised occlusion",
        "11:55:00 demo/pump-1 x",
    ]


@pytest.mark.parametrize("document", [{}, {"gateway": "demo", "data": {"events": 3}}])
def test_a_bad_history_document_is_a_problem_not_a_crash(document: dict[str, Any]) -> None:
    model = WatchModel()
    assert model.add_history(document) == 0
    assert model.problems == 1
    assert "history" in model.last_problem
