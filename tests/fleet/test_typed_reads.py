"""Typed values the fleet reads from what gateways publish (no database needed): a refused
backfill's error and a pump's line on the fleet page."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.fleet.overview import AlarmOverview, PumpOverview
from daemon.fleet.records import BadMessage, ResponseError
from daemon.fleet.store import PumpState

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


@given(
    st.none() | st.sampled_from(("unknown_session", "not_retained")),
    st.text(max_size=20),
    st.none() | st.integers(0, 2**62),
)
def test_a_response_error_round_trips(code: str | None, message: str, oldest: int | None) -> None:
    error = ResponseError(code, message, oldest)
    assert ResponseError.from_json(json.loads(json.dumps(error.to_json())), "t") == error


def test_a_malformed_response_error_names_the_field() -> None:
    with pytest.raises(BadMessage, match=r"data\.error\.code"):
        ResponseError.from_json({"code": 3, "message": "m"}, "topic 'x'")
    assert ResponseError.from_json(
        {"code": "not_retained", "message": "m", "oldest_seq": True}, "t"
    )
    assert ResponseError.from_json({"code": "c", "oldest_seq": "4"}, "t").oldest_seq is None


def test_a_pump_line_reads_the_stored_state_once() -> None:
    data = {
        "connection": "online",
        "status": 3,  # off contract: shown as null, the page stays up
        "drug": "norepinephrine",
        "alarms": [{"code": "occlusion", "priority": "high", "since": "s"}, "x"],
    }
    pump = PumpOverview.from_state(PumpState("gw", "pump-1", "s", 4, T0, data))
    assert pump.alarms == (AlarmOverview("occlusion", "high", "s"),)
    assert pump.to_json() == {
        "pump_id": "pump-1",
        "connection": "online",
        "status": None,
        "drug": "norepinephrine",
        "alarms": [{"code": "occlusion", "priority": "high", "since": "s"}],
        "ts": "2026-12-06T12:00:00.000Z",
    }
