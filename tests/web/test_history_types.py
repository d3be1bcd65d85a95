"""The history API's typed rows: a point round-trips through the JSON the API serves; a
malformed journal row is a PayloadError naming the row and the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.base.errors import PayloadError
from daemon.base.quantities import Quantity
from daemon.journal.history import HistoryEvent, HistoryPoint, PumpSeries
from daemon.journal.records import JournalKind, JournalRow

TS = "2026-12-06T12:00:00.000Z"
quantities = st.none() | st.builds(
    Quantity, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(("mL/h", "U/h"))
)
points = st.builds(
    HistoryPoint,
    st.just(TS),
    quantities,
    quantities,
    st.sampled_from(("rate_changed", "delivery_stopped", "before")),
)


@given(points)
def test_a_point_round_trips_through_its_json(point: HistoryPoint) -> None:
    assert HistoryPoint.from_json(json.loads(json.dumps(point.to_json()))) == point


@given(st.lists(points, max_size=3), st.booleans())
def test_a_series_serves_its_points_in_order(points: list[HistoryPoint], cut: bool) -> None:
    body = PumpSeries(tuple(points), cut).to_json()
    assert [HistoryPoint.from_json(p) for p in body["points"]] == points
    assert body["truncated"] is cut


def row(payload: dict[str, object]) -> JournalRow:
    return JournalRow(12, TS, JournalKind.EVENT, "pump-1", payload, "0" * 64, "1" * 64)


def test_an_event_item_keeps_the_event_as_published() -> None:
    event = {"type": "alarm_raised", "alarm": {"code": "occlusion"}}
    item = HistoryEvent.from_row(row({"seq": 3, "event": event}))
    assert item.to_json() == {"n": 12, "ts": TS, "pump_id": "pump-1", "seq": 3, "data": event}


def test_a_malformed_event_row_names_the_row_and_the_field() -> None:
    with pytest.raises(PayloadError, match="journal row 12: seq"):
        HistoryEvent.from_row(row({"seq": "3", "event": {}}))
    with pytest.raises(PayloadError, match="journal row 12: event: expected an object"):
        HistoryEvent.from_row(row({"seq": 3, "event": "x"}))
