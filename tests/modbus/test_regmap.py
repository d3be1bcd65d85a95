"""The register-map codec: profile loading, range checks, and hypothesis properties."""

from __future__ import annotations

import contextlib
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DriverError, FrameError
from drivers.modbus import (
    Field,
    ProfileError,
    RegisterMap,
    RegType,
    Span,
    Table,
    Value,
    WordOrder,
    load_profile,
    parse_profile,
)
from drivers.modbus.regmap import PROFILES_DIR

GENERIC = load_profile("generic-pump-v1")
ACME = load_profile(Path(__file__).parent / "profiles" / "acme-syringe-v3.toml")
MAPS = [GENERIC, ACME]


def test_generic_profile_is_the_documented_map() -> None:
    """Addresses, types, scales and codes of generic-pump-v1 are the documented ones."""
    m = GENERIC
    assert m.word_order is WordOrder.BIG
    expected = {
        "map_version": (0, 1), "status": (1, 1), "alarms": (2, 1), "rate": (3, 2),
        "vtbi": (5, 2), "volume_infused": (7, 2), "battery": (9, 1), "heartbeat": (10, 1),
        "comm_timeout_s": (11, 1), "rate_setpoint": (20, 2), "command": (22, 1),
        "command_seq": (23, 1), "executed_seq": (24, 1), "last_result": (25, 1),
        "model": (30, 8), "serial": (38, 4), "firmware": (42, 1), "max_rate": (50, 2),
    }  # fmt: skip
    assert {n: (f.address, f.words) for n, f in m.fields.items()} == expected
    assert all(f.table is Table.HOLDING for f in m.fields.values())
    assert {n for n, f in m.fields.items() if f.writable} == {
        "comm_timeout_s", "rate_setpoint", "command", "command_seq"
    }  # fmt: skip
    assert m["rate"].scale == Decimal("0.01")
    assert m["alarms"].bits == {
        0: "occlusion", 1: "air_in_line", 2: "empty", 3: "door_open", 4: "low_battery",
        5: "comm_timeout", 6: "near_end", 7: "hardware_fault",
    }  # fmt: skip
    assert m.status_values == {0: "stopped", 1: "infusing", 2: "paused", 3: "alarm"}
    assert m.commands == {
        "start": 1, "stop": 2, "pause": 3, "clear_volume": 4, "acknowledge_alarms": 5,
        "apply_rate": 6,
    }  # fmt: skip
    assert m.results == {0: "ok", 1: "out_of_range", 2: "not_allowed"}


def test_u32_word_order_and_scale() -> None:
    """52.5 mL/h is raw 5250: high word first in generic, low word first in acme (x10)."""
    assert GENERIC.encode({"rate": Decimal("52.5")}) == {3: 0, 4: 5250}
    assert GENERIC.encode({"rate": Decimal(1000)}) == {3: 1, 4: 34464}
    assert ACME.encode({"rate": Decimal("1000.0")}) == {104: 10000, 105: 0}
    assert ACME.encode({"volume_infused": Decimal("65.536")}) == {106: 0, 107: 1}


def test_decode_names_register_and_value_when_out_of_range() -> None:
    """Out-of-range, undefined and malformed values are FrameErrors that say where and what."""
    span = Span(Table.HOLDING, 0, 26)
    words = [0] * 26
    words[0] = 2
    with pytest.raises(FrameError, match=r"map_version \(holding register 0\): value 2"):
        GENERIC.decode(["map_version"], {span: words})
    words[0], words[3], words[4] = 1, 0xFFFF, 0xFFFF
    with pytest.raises(FrameError, match=r"rate \(holding register 3-4\): value 42949672\.95"):
        GENERIC.decode(["rate"], {span: words})
    with pytest.raises(FrameError, match="asked for 26 registers, the answer has 3"):
        GENERIC.decode(["status"], {span: [0, 1, 0]})
    with pytest.raises(FrameError, match=r"model \(holding register 30-37\): not ASCII"):
        GENERIC["model"].decode([0xFFFF] * 8, WordOrder.BIG)
    with pytest.raises(FrameError, match="value 9 is not a defined status"):
        GENERIC.status_name(9)


def test_plan_reads_coalesces_across_small_gaps_only() -> None:
    """generic-pump-v1 polls in one request; acme (gap 0) splits by table and gaps."""
    assert GENERIC.plan_reads(["status", "comm_timeout_s", "executed_seq", "last_result"]) == (
        Span(Table.HOLDING, 1, 25),
    )
    assert GENERIC.plan_reads(["status", "last_result"]) == (
        Span(Table.HOLDING, 1, 1),
        Span(Table.HOLDING, 25, 1),
    )
    assert ACME.plan_reads(["status", "rate", "comm_timeout_s"]) == (
        Span(Table.HOLDING, 10, 1),
        Span(Table.INPUT, 101, 1),
        Span(Table.INPUT, 104, 2),
    )


def _profile_data() -> dict[str, Any]:
    return tomllib.loads((PROFILES_DIR / "generic-pump-v1.toml").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["registers"].pop("status"), r"lacks required field\(s\) \['status'\]"),
        (lambda d: d["registers"]["rate"].update(address=4), "rate .* overlaps vtbi"),
        (lambda d: d["registers"]["rate"].update(type="float"), r"registers\.rate\]: 'float'"),
        (lambda d: d["registers"]["rate"].update(scale="abc"), r"registers\.rate\]\.scale"),
        (lambda d: d["registers"]["model"].pop("words"), "missing key 'words'"),
        (lambda d: d["profile"].update(word_order="middle"), "word_order must be"),
        (lambda d: d["commands"].pop("start"), r"\[commands\] lacks \['start'\]"),
        (lambda d: d["status_values"].update({"4": "exploded"}), "status_values"),
        (lambda d: d["registers"]["alarms"]["bits"].update({"16": "x"}), "bit numbers"),
        (lambda d: d["registers"]["command"].update(access="wo"), "access must be"),
    ],
)
def test_bad_profiles_name_the_offending_key(mutate: Any, message: str) -> None:
    """A malformed profile is a ProfileError naming the key, not a crash."""
    data = _profile_data()
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        parse_profile(data, source="bad.toml")


def test_missing_profile_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("[profile\n")
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile(tmp_path / "broken.toml")


# -- properties -------------------------------------------------------------------------------


def _valid_values(f: Field) -> st.SearchStrategy[Value]:
    if f.type is RegType.ASCII:
        alphabet = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
        return st.text(alphabet, max_size=2 * f.words)
    if f.type is RegType.BITFIELD:
        return st.frozensets(st.sampled_from(sorted(f.bits.values()))).map(frozenset)
    top = 0xFFFF if f.type is RegType.U16 else 0xFFFFFFFF
    lo = int((f.minimum or 0) / f.scale)
    hi = min(top, int(f.maximum / f.scale)) if f.maximum is not None else top
    raws = st.integers(max(0, lo), hi)
    return raws.map(lambda r: Decimal(r) * f.scale) if f.scaled else raws.map(int)


@st.composite
def _field_and_value(draw: st.DrawFn) -> tuple[RegisterMap, Field, Value]:
    m = draw(st.sampled_from(MAPS))
    f = draw(st.sampled_from(sorted(m.fields.values(), key=lambda x: x.name)))
    return m, f, draw(_valid_values(f))


@given(_field_and_value())
@settings(max_examples=300)
def test_encode_then_decode_is_identity(case: tuple[RegisterMap, Field, Value]) -> None:
    """Every valid value of every field of both maps survives encode -> decode unchanged."""
    m, f, value = case
    words = f.encode(value, m.word_order)
    assert len(words) == f.words
    assert all(0 <= w <= 0xFFFF for w in words)
    assert f.decode(words, m.word_order) == value


@given(
    st.sampled_from(MAPS),
    st.lists(st.integers(-5, 0x1_0005), min_size=0, max_size=140),
    st.integers(0, 200),
)
@settings(max_examples=300)
def test_any_registers_decode_or_raise_a_driver_error(
    m: RegisterMap, words: list[int], start: int
) -> None:
    """Arbitrary register contents and lengths never crash the decoder: a value or FrameError."""
    for f in m.fields.values():
        chunk = words[: f.words]
        with contextlib.suppress(FrameError):
            f.decode(chunk, m.word_order)
    names = [n for n, f in m.fields.items() if f.table is Table.HOLDING]
    spans = {Span(Table.HOLDING, start, 60): words}
    with contextlib.suppress(DriverError):
        m.decode(names, spans)


@given(st.sampled_from(MAPS), st.data())
@settings(max_examples=200)
def test_encode_rejects_out_of_range_with_a_driver_error(
    m: RegisterMap, data: st.DataObject
) -> None:
    """Values outside a numeric field's range raise DriverError naming the field."""
    numeric = [f for f in m.fields.values() if f.type in (RegType.U16, RegType.U32)]
    f = data.draw(st.sampled_from(sorted(numeric, key=lambda x: x.name)))
    top = Decimal(0xFFFF if f.type is RegType.U16 else 0xFFFFFFFF) * f.scale
    ceiling = min(f.maximum, top) if f.maximum is not None else top
    value = data.draw(
        st.one_of(
            st.integers(1, 10**6).map(lambda k: ceiling + k * f.scale),
            st.integers(1, 10**6).map(lambda k: (f.minimum or Decimal(0)) - k * f.scale),
        )
    )
    with pytest.raises(DriverError, match=f.name):
        f.encode(value, m.word_order)
