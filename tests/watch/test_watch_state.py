"""What watch keeps of a pump's and a bed's state: read once, leniently (off-contract fields
are shown as unknown, never raised)."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.base.quantities import Quantity
from daemon.ui.watch_state import BedView, PumpView, Reading


def test_a_pump_state_is_read_into_its_line() -> None:
    view = PumpView.from_json(
        {
            "connection": "online",
            "status": "infusing",
            "rate": {"value": 52.5, "unit": "mL/h"},
            "dose": {"value": 0.05, "unit": "ug/kg/min"},
            "drug": "norepinephrine",
            "alarms": [{"code": "occlusion"}, "not an alarm"],
        }
    )
    assert view == PumpView(
        "online",
        "infusing",
        "norepinephrine",
        Quantity(0.05, "ug/kg/min"),
        Quantity.rate(52.5),
        ("occlusion",),
    )


def test_an_off_contract_pump_state_shows_unknowns() -> None:
    view = PumpView.from_json({"dose": {"value": True, "unit": "mL/h"}, "rate": 5, "alarms": 3})
    assert view == PumpView("?", "?", None, None, None, ())


def test_a_bed_keeps_its_readings_and_the_newest_time_with_a_zone() -> None:
    at = "2026-12-06T12:00:00+00:00"
    bed = BedView.from_json(
        {
            "map": {"value": 72, "unit": "mm[Hg]", "at": at, "stale": False},
            "hr": {"value": "x", "at": "2026-12-06T12:05:00+00:00", "stale": True},
            "spo2": {"value": 97, "at": "2026-12-06T13:00:00"},  # no zone: no time
            "sbp": None,
            "source": "sim",
        }
    )
    assert bed.map == Reading(72.0, stale=False, at=datetime(2026, 12, 6, 12, tzinfo=UTC))
    assert bed.hr == Reading(None, stale=True, at=datetime(2026, 12, 6, 12, 5, tzinfo=UTC))
    assert bed.sbp is None
    assert bed.newest() == datetime(2026, 12, 6, 12, 5, tzinfo=UTC)
    assert bed.source == "sim"
