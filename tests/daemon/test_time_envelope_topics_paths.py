"""Small contracts: RFC 3339 times, deterministic envelopes, topic names, the data dir."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.base.envelope import BRIDGE_OFFLINE, BRIDGE_ONLINE, SCHEMA_IDS, Kind, encode, envelope
from daemon.base.paths import default_data_dir, journal_path
from daemon.base.timefmt import at_ms, format_ts, parse_ts
from daemon.base.topics import Topics, is_topic_id


def test_format_ts_is_utc_with_z_and_milliseconds() -> None:
    """Any aware time prints as UTC ...sss Z; microseconds are truncated, not rounded."""
    plus_two = timezone(timedelta(hours=2))
    assert format_ts(datetime(2026, 11, 26, 19, 18, 0, 999999, tzinfo=plus_two)) == (
        "2026-11-26T17:18:00.999Z"
    )
    assert format_ts(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
        ),
    )
)
def test_at_ms_is_the_instant_format_ts_spells(when: datetime) -> None:
    """Property: ``at_ms`` (used to build check requests without text) is exactly what
    formatting and parsing back give: UTC, truncated to the millisecond."""
    assert at_ms(when) == parse_ts(format_ts(when))
    assert at_ms(when).tzinfo is UTC
    assert at_ms(when).microsecond % 1000 == 0


def test_at_ms_refuses_naive_times() -> None:
    """Like format_ts: a naive datetime is refused, never taken as local time."""
    with pytest.raises(ValueError, match="timezone-aware"):
        at_ms(datetime(2026, 1, 1, 12, 0))


def test_format_ts_refuses_naive_times() -> None:
    """A naive datetime would silently mean local time: refused."""
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts(datetime(2026, 11, 26, 17, 18))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T17:18:00Z", datetime(2026, 11, 26, 17, 18, tzinfo=UTC)),
        ("2026-11-26t17:18:00.5z", datetime(2026, 11, 26, 17, 18, 0, 500000, tzinfo=UTC)),
        ("2026-11-26 18:18:00.123456789+01:00", datetime(2026, 11, 26, 17, 18, 0, 123456, UTC)),
        ("2026-11-26T12:18:00-05:00", datetime(2026, 11, 26, 17, 18, tzinfo=UTC)),
    ],
)
def test_parse_ts_accepts_rfc3339_with_a_zone(text: str, expected: datetime) -> None:
    """Z, offsets, lower-case separators and nanosecond fractions are read as UTC."""
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    "text",
    ["2026-11-26T17:18:00", "2026-11-26", "yesterday", "2026-13-26T17:18:00Z", "", "1764177480"],
)
def test_parse_ts_refuses_anything_else(text: str) -> None:
    """No zone, no time, or an impossible date: ValueError."""
    with pytest.raises(ValueError, match=r"RFC 3339|valid date-time"):
        parse_ts(text)


@given(st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)))
def test_format_then_parse_round_trips_to_the_millisecond(when: datetime) -> None:
    """parse_ts(format_ts(t)) is t truncated to milliseconds."""
    assert parse_ts(format_ts(when)) == when.replace(microsecond=when.microsecond // 1000 * 1000)


def test_envelope_is_compact_sorted_and_deterministic() -> None:
    """Equal content gives equal bytes; keys sorted, no spaces, UTF-8 kept, NaN refused."""
    at = datetime(2026, 11, 26, 17, 18, tzinfo=UTC)
    one = encode(envelope(Kind.PUMP_STATE, gateway="g", session="s", seq=3, ts=at, data={"b": 1}))
    two = encode(envelope(Kind.PUMP_STATE, gateway="g", session="s", seq=3, ts=at, data={"b": 1}))
    assert one == two
    assert one == (
        b'{"data":{"b":1},"gateway":"g","schema":"infusiond.pump.state/1","seq":3,'
        b'"session":"s","ts":"2026-11-26T17:18:00.000Z"}'
    )
    assert encode({"unit": "µg"}) == '{"unit":"µg"}'.encode()
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode({"x": float("nan")})


def test_schema_strings_and_bridge_state_payloads() -> None:
    """Every kind maps to infusiond.<kind>/1; bridge/state payloads are the tiny fixed ones."""
    assert Kind.PUMP_COMMAND_RESULT.schema == "infusiond.pump.command.result/1"
    assert len(SCHEMA_IDS) == 9  # + bridge.health and bridge.events.response
    assert json.loads(BRIDGE_ONLINE) == {"state": "online"}
    assert json.loads(BRIDGE_OFFLINE) == {"state": "offline"}


def test_topic_tree() -> None:
    """Topics are the documented tree under infusiond/<gateway_id>/."""
    t = Topics("gw-1")
    assert t.bridge_state == "infusiond/gw-1/bridge/state"
    assert t.bridge_info == "infusiond/gw-1/bridge/info"
    assert t.pump_state("p1") == "infusiond/gw-1/pump/p1/state"
    assert t.pump_event("p1") == "infusiond/gw-1/pump/p1/event"
    assert t.pump_command_result("p1") == "infusiond/gw-1/pump/p1/command/result"
    assert t.vitals_state("bed-1") == "infusiond/gw-1/vitals/bed-1/state"
    assert t.command_filter == "infusiond/gw-1/pump/+/command"
    assert t.pump_id_of_command("infusiond/gw-1/pump/p1/command") == "p1"
    assert t.pump_id_of_command("infusiond/gw-1/pump/p1/command/result") is None
    assert t.pump_id_of_command("infusiond/other/pump/p1/command") is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "-x", "x" * 65, "é"])
def test_ids_that_would_break_the_topic_tree_are_refused(bad: str) -> None:
    """Wildcards, separators, spaces and overlong ids cannot be gateway/pump/bed ids."""
    assert not is_topic_id(bad)
    with pytest.raises(ValueError, match="not a valid topic level"):
        Topics(bad)


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$XDG_STATE_HOME/infusiond when set (absolute), else ~/.local/state/infusiond."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "infusiond"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "state" / "infusiond"
    assert journal_path(tmp_path).name == "journal.sqlite3"


def test_encode_converts_decimal_datetime_and_enums() -> None:
    """Driver values (Decimal mL/h, aware datetimes, enums) encode as contract JSON."""
    at = datetime(2026, 11, 26, 17, 18, 0, 5000, tzinfo=UTC)
    assert encode(
        {"rate": Decimal("52.50"), "n": Decimal(3), "at": at, "kind": Kind.PUMP_EVENT}
    ) == (b'{"at":"2026-11-26T17:18:00.005Z","kind":"pump.event","n":3,"rate":52.5}')
    with pytest.raises(ValueError, match="non-finite"):
        encode({"rate": Decimal("NaN")})
    with pytest.raises(TypeError, match="set is not JSON"):
        encode({"x": {1}})
