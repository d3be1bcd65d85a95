"""Daemon vitals state: the exact vitals.state data shape, staleness by age, newest wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from daemon.core.vitals import VitalsBoard, VitalsState, rfc3339_ms
from drivers.hl7 import Observation, Parameter, VitalsSample

T0 = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)


def _sample(
    at: datetime,
    bed: str | None = "bed-1",
    *,
    received_at: datetime | None = None,
    **values: float,
) -> VitalsSample:
    """A sample stamped ``at``, received by the gateway at ``received_at`` (default: ``at``)."""
    units = {"map": "mm[Hg]", "sbp": "mm[Hg]", "dbp": "mm[Hg]", "hr": "/min", "spo2": "%"}
    return VitalsSample(
        source="hl7:MON",
        control_id="c",
        bed=bed,
        observations={
            Parameter(k): Observation(Decimal(str(v)), units[k], at) for k, v in values.items()
        },
        received_at=at if received_at is None else received_at,
    )


def test_snapshot_has_the_exact_public_shape() -> None:
    """Each parameter is {value, unit, at} (RFC 3339 Z, ms) or null, plus source."""
    state = VitalsState("bed-1")
    state.update(_sample(T0, map=75, sbp=105, dbp=60.5, hr=88))
    assert state.snapshot(T0 + timedelta(seconds=5)) == {
        "map": {"value": 75, "unit": "mm[Hg]", "at": "2026-11-26T12:00:00.123Z"},
        "sbp": {"value": 105, "unit": "mm[Hg]", "at": "2026-11-26T12:00:00.123Z"},
        "dbp": {"value": 60.5, "unit": "mm[Hg]", "at": "2026-11-26T12:00:00.123Z"},
        "hr": {"value": 88, "unit": "/min", "at": "2026-11-26T12:00:00.123Z"},
        "spo2": None,
        "source": "hl7:MON",
    }


def test_value_older_than_stale_after_is_marked_stale() -> None:
    """At exactly stale_after_s a value is fresh; one second later it carries stale: true."""
    state = VitalsState("bed-1")  # default 900 s
    state.update(_sample(T0, map=75))
    state.update(_sample(T0 + timedelta(seconds=600), hr=90))
    at_limit = state.snapshot(T0 + timedelta(seconds=900))
    assert "stale" not in at_limit["map"]
    later = state.snapshot(T0 + timedelta(seconds=901))
    assert later["map"]["stale"] is True
    assert "stale" not in later["hr"]
    assert state.is_stale(Parameter.MAP, T0 + timedelta(seconds=901))
    assert state.is_stale(Parameter.SPO2, T0)  # never received counts as stale
    assert state.age_s(Parameter.HR, T0 + timedelta(seconds=700)) == pytest.approx(100)


def test_custom_stale_after() -> None:
    """stale_after_s is configurable and must be positive."""
    state = VitalsState("bed-1", stale_after_s=30)
    state.update(_sample(T0, map=75))
    assert state.snapshot(T0 + timedelta(seconds=31))["map"]["stale"] is True
    with pytest.raises(ValueError, match="stale_after_s"):
        VitalsState("bed-1", stale_after_s=0)


def test_older_observation_never_overwrites_a_newer_one() -> None:
    """A late message does not replace fresher values; update reports whether anything is new."""
    state = VitalsState("bed-1")
    assert state.update(_sample(T0, map=75))
    assert not state.update(_sample(T0 - timedelta(minutes=20), map=50))
    assert not state.update(_sample(T0, map=75))  # same time again: nothing new
    assert state.update(_sample(T0, map=76))  # same time, corrected value: replaces
    assert not state.update(_sample(T0, map=76))
    latest = state.latest(Parameter.MAP)
    assert latest is not None
    assert latest.value == 76


def test_reading_stamped_ahead_is_held_at_its_receipt_and_a_later_reading_replaces_it() -> None:
    """MAP 50 stamped 50 s ahead, received at T0, is held (published, checked) at T0; the
    monitor's MAP 75 stamped T0+1 s and received then replaces it at once."""
    state = VitalsState("bed-1")
    assert state.update(_sample(T0 + timedelta(seconds=50), received_at=T0, map=50))
    assert state.snapshot(T0)["map"]["at"] == rfc3339_ms(T0)
    assert state.check_vitals() == {"map": {"value": 50, "unit": "mm[Hg]", "at": rfc3339_ms(T0)}}
    real = T0 + timedelta(seconds=1)
    assert state.update(_sample(real, received_at=real, map=75))
    latest = state.latest(Parameter.MAP)
    assert latest is not None
    assert (latest.value, latest.at) == (75, real)


def test_reading_stamped_ahead_goes_stale_counted_from_its_receipt() -> None:
    """Staleness runs from min(stamp, receipt): a value stamped 50 s ahead is stale 901 s after
    it arrived, not 951 s; a value stamped 10 min before its receipt is aged from its stamp."""
    ahead = VitalsState("bed-1")
    ahead.update(_sample(T0 + timedelta(seconds=50), received_at=T0, map=50))
    assert ahead.snapshot(T0 + timedelta(seconds=901))["map"]["stale"] is True
    assert ahead.age_s(Parameter.MAP, T0 + timedelta(seconds=901)) == pytest.approx(901)
    late = VitalsState("bed-1")
    late.update(_sample(T0 - timedelta(minutes=10), received_at=T0, map=70))
    assert late.age_s(Parameter.MAP, T0) == pytest.approx(600)
    assert late.snapshot(T0 + timedelta(seconds=301))["map"]["stale"] is True


def test_check_vitals_gives_bp_and_hr_for_the_rule_engine() -> None:
    """check_vitals() is the check request's vitals: map/sbp/dbp/hr present, never spo2."""
    state = VitalsState("bed-1")
    assert state.check_vitals() is None
    state.update(_sample(T0, map=64, sbp=95, spo2=97))
    assert state.check_vitals() == {
        "map": {"value": 64, "unit": "mm[Hg]", "at": "2026-11-26T12:00:00.123Z"},
        "sbp": {"value": 95, "unit": "mm[Hg]", "at": "2026-11-26T12:00:00.123Z"},
    }


def test_board_routes_by_bed_then_default() -> None:
    """Samples go to their PV1 bed when configured, else to the default bed, else nowhere."""
    board = VitalsBoard(["bed-1", "bed-2"], default_bed="bed-1")
    assert board.update(_sample(T0, bed="bed-2", map=70)) == "bed-2"
    assert board.update(_sample(T0, bed="ICU-9", map=71)) == "bed-1"
    assert board.update(_sample(T0, bed=None, hr=80)) == "bed-1"
    assert VitalsBoard(["bed-1"]).update(_sample(T0, bed="elsewhere", map=1)) is None
    with pytest.raises(ValueError, match="not a configured bed"):
        VitalsBoard(["bed-1"], default_bed="bed-3")


def test_rfc3339_needs_aware_times_and_converts_to_utc() -> None:
    """Times are rendered in UTC with a Z and milliseconds."""
    plus2 = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339_ms(plus2) == "2026-01-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="aware"):
        rfc3339_ms(datetime(2026, 1, 1))  # naive on purpose
