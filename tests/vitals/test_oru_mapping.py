"""ORU^R01 messages map to VitalsSample with MDC or LOINC codes and canonical UCUM units;
anything that cannot be accepted raises MessageError naming the segment and field."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.hl7 import (
    Hl7ErrorCode,
    MessageError,
    Parameter,
    build_oru,
    parse_oru,
)
from drivers.hl7.dtm import format_dtm, parse_dtm

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)

MDC_CUFF = (
    "MSH|^~\\&|MONITOR^0012ab^EUI-64|ICU|||20261126115958+0000||ORU^R01^ORU_R01|m-1|P|2.6\r"
    "PID|||12345^^^HOSP^MR||Doe^John\r"
    "PV1||I|ICU^3^bed-7\r"
    "OBR|1|||182777000^monitoring of patient^SCT|||20261126115958+0000\r"
    "OBX|1|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.1.9.150301|118|266016^MDC_DIM_MMHG^MDC|||||R|||"
    "20261126115950+0000\r"
    "OBX|2|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.1.9.150302|61|266016^MDC_DIM_MMHG^MDC|||||R|||"
    "20261126115950+0000\r"
    "OBX|3|NM|150303^MDC_PRESS_CUFF_MEAN^MDC|1.1.9.150303|80|266016^MDC_DIM_MMHG^MDC|||||R|||"
    "20261126115950+0000\r"
    "OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.147842|88|264864^MDC_DIM_BEAT_PER_MIN^MDC"
    "|||||R|||20261126115958+0000\r"
    "OBX|5|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R\r"
    "OBX|6|NM|150344^MDC_TEMP^MDC|1.4.1|36.6|268192^MDC_DIM_DEGC^MDC|||||R\r"
)

LOINC_UCUM = (
    "MSH|^~\\&|GW|WARD|||202611261159||ORU^R01|L-9|P|2.5.1\n"
    "OBR|1||||||20261126115900\n"
    "OBX|1|NM|8478-0^Mean blood pressure^LN||72.5|mmHg^^UCUM|||||F\n"
    "OBX|2|NM|8480-6^Systolic blood pressure^LN||101|mm[Hg]^mm[Hg]^UCUM|||||F\n"
    "OBX|3|NM|8462-4^Diastolic blood pressure^LN||58|mm Hg|||||F\n"
    "OBX|4|NM|8867-4^Heart rate^LN||91|bpm|||||F\n"
    "OBX|5|NM|59408-5^SpO2^LN||96|%|||||F\n"
)


# Not Zl/Zp either (U+2028, U+2029): python-hl7 strips them, as whitespace, from the end of
# a segment, so an id ending in one cannot come back unchanged (found by this test; the ids the
# daemon itself relies on are topic ids, which never contain them).
PRINTABLE = st.characters(
    min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")
)


def _parse(text: str) -> object:
    return parse_oru(text.encode(), now=NOW)


def _error(text: str) -> MessageError:
    with pytest.raises(MessageError) as info:
        parse_oru(text.encode(), now=NOW)
    return info.value


def test_mdc_cuff_message_maps_every_vital_with_ucum_units_and_obx_times() -> None:
    """Philips-style MDC codes map to map/sbp/dbp/hr/spo2; units become UCUM; temp ignored."""
    sample = parse_oru(MDC_CUFF.encode(), now=NOW)
    obs = sample.observations
    assert {p: (o.value, o.unit) for p, o in obs.items()} == {
        Parameter.SBP: (Decimal(118), "mm[Hg]"),
        Parameter.DBP: (Decimal(61), "mm[Hg]"),
        Parameter.MAP: (Decimal(80), "mm[Hg]"),
        Parameter.HR: (Decimal(88), "/min"),
        Parameter.SPO2: (Decimal(97), "%"),
    }
    assert obs[Parameter.MAP].at == datetime(2026, 11, 26, 11, 59, 50, tzinfo=UTC)
    assert obs[Parameter.MAP].code == "MDC:150303"
    # SpO2 has no OBX-14: the OBR-7 observation time applies
    assert obs[Parameter.SPO2].at == datetime(2026, 11, 26, 11, 59, 58, tzinfo=UTC)
    assert sample.bed == "bed-7"
    assert sample.patient_id == "12345"
    assert sample.source == "hl7:MONITOR"
    assert sample.control_id == "m-1"


def test_loinc_message_with_unit_aliases_and_lf_segment_ends() -> None:
    """LOINC codes map too; mmHg / mm Hg / bpm are canonicalised; LF line ends are accepted."""
    sample = parse_oru(LOINC_UCUM.encode(), now=NOW)
    got = {p.value: (str(o.value), o.unit) for p, o in sample.observations.items()}
    assert got == {
        "map": ("72.5", "mm[Hg]"),
        "sbp": ("101", "mm[Hg]"),
        "dbp": ("58", "mm[Hg]"),
        "hr": ("91", "/min"),
        "spo2": ("96", "%"),
    }
    assert sample.observations[Parameter.HR].at == datetime(2026, 11, 26, 11, 59, tzinfo=UTC)
    assert sample.bed is None


def test_invasive_pressure_wins_over_cuff_in_the_same_message() -> None:
    """With both an arterial line and a cuff MAP, the arterial (lower rank) value is used."""
    text = MDC_CUFF + (
        "OBX|7|NM|150039^MDC_PRESS_BLD_ART_ABP_MEAN^MDC||75|266016^MDC_DIM_MMHG^MDC|||||R\r"
    )
    sample = parse_oru(text.encode(), now=NOW)
    assert sample.observations[Parameter.MAP].value == 75
    assert sample.observations[Parameter.MAP].code == "MDC:150039"


@pytest.mark.parametrize(
    ("obx3", "expected"),
    [
        ("MDC_PRESS_CUFF_MEAN^^MDC", "MDC:150303"),  # reference id instead of the number
        ("999999^MDC_PRESS_BLD_ART_ABP_MEAN^MDC", "MDC:150039"),  # unknown number, known id
        ("X1^Local MAP^99LOCAL^8478-0^Mean blood pressure^LN", "LN:8478-0"),  # alternate code
        ("8478-0^^", "LN:8478-0"),  # no coding system given
    ],
)
def test_obx3_is_matched_on_codes_ids_and_alternates(obx3: str, expected: str) -> None:
    """OBX-3 maps by code, by MDC reference id, or by its alternate identifier."""
    text = MDC_CUFF.replace("150303^MDC_PRESS_CUFF_MEAN^MDC", obx3)
    assert parse_oru(text.encode(), now=NOW).observations[Parameter.MAP].code == expected


def test_display_text_alone_does_not_map() -> None:
    """A local code whose display text reads like a vital is not guessed at."""
    text = MDC_CUFF.replace("150303^MDC_PRESS_CUFF_MEAN^MDC", "X1^Mean blood pressure^99LOCAL")
    assert Parameter.MAP not in parse_oru(text.encode(), now=NOW).observations


def test_observation_that_cannot_be_obtained_is_skipped() -> None:
    """OBX-11 status X (cannot be obtained) with an empty value is ignored, not an error."""
    text = MDC_CUFF.replace(
        "|97|262688^MDC_DIM_PERCENT^MDC|||||R", "||262688^MDC_DIM_PERCENT^MDC|||||X"
    )
    assert Parameter.SPO2 not in parse_oru(text.encode(), now=NOW).observations


@pytest.mark.parametrize(
    ("mutate", "location", "code", "words"),
    [
        (
            lambda t: t.replace("ORU^R01^ORU_R01", "ADT^A01"),
            "MSH^1^9",
            Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            "message type 'ADT'",
        ),
        (
            lambda t: t.replace("ORU^R01^ORU_R01", "ORU^R30"),
            "MSH^1^9",
            Hl7ErrorCode.UNSUPPORTED_EVENT,
            "trigger event 'R30'",
        ),
        (
            lambda t: t.replace("|m-1|", "||"),
            "MSH^1^10",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-10 message control id is missing",
        ),
        (
            lambda t: t.replace("|P|2.6", "||2.6"),
            "MSH^1^11",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-11 processing id",
        ),
        (
            lambda t: t.replace("|P|2.6", "|P|"),
            "MSH^1^12",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-12 version id",
        ),
        (
            lambda t: t.replace("||ORU^R01^ORU_R01", "||"),
            "MSH^1^9",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-9 message type is missing",
        ),
        (
            lambda t: t.replace("|80|", "|eighty|"),
            "OBX^3^5",
            Hl7ErrorCode.DATA_TYPE,
            "value 'eighty' of MAP is not numeric",
        ),
        (
            lambda t: t.replace("|80|", "||"),
            "OBX^3^5",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "value of MAP",
        ),
        (
            lambda t: t.replace("|80|266016^MDC_DIM_MMHG^MDC", "|80|kPa^kPa^UCUM"),
            "OBX^3^6",
            Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
            "unit 'kPa^kPa^UCUM' of MAP is unknown",
        ),
        (
            lambda t: t.replace(
                "|88|264864^MDC_DIM_BEAT_PER_MIN^MDC", "|88|262688^MDC_DIM_PERCENT^MDC"
            ),
            "OBX^4^6",
            Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
            "unit '%' is not a unit of HR",
        ),
        (
            lambda t: t.replace("|80|266016^MDC_DIM_MMHG^MDC", "|80|"),
            "OBX^3^6",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "unit of MAP is missing",
        ),
        (
            lambda t: t.replace("|97|", "|140|"),
            "OBX^5^5",
            Hl7ErrorCode.DATA_TYPE,
            "value 140 % of SPO2 is outside 0..100",
        ),
        (
            lambda t: t.replace("OBX|3|NM|", "OBX|3|ST|"),
            "OBX^3^2",
            Hl7ErrorCode.DATA_TYPE,
            "value type 'ST' of MAP is not numeric",
        ),
        (
            lambda t: t.replace(
                "|||||R|||20261126115950+0000\rOBX|3", "|||||R|||2026112611595x\rOBX|3"
            ),
            "OBX^2^14",
            Hl7ErrorCode.DATA_TYPE,
            "is not an HL7 DTM",
        ),
        (
            lambda t: t.replace("20261126115958+0000\rOBX|5", "20261126140000+0000\rOBX|5"),
            "OBX^4^14",
            Hl7ErrorCode.DATA_TYPE,
            "of HR is 7200 s ahead of the gateway clock (limit 60 s)",
        ),
        (
            lambda t: t.split("OBX|1")[0],
            "OBX^1",
            Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            "no OBX segment",
        ),
        (
            lambda t: t.replace("MSH|^~\\&|", "MSH|^^\\&|"),
            "MSH^1^2",
            Hl7ErrorCode.DATA_TYPE,
            "4 distinct encoding characters",
        ),
        (
            lambda t: "PID|||x\r" + t,
            "MSH^1",
            Hl7ErrorCode.SEGMENT_SEQUENCE,
            "must start with an MSH segment",
        ),
        (
            lambda t: t.replace("PV1||I", "pv1||I"),
            "",
            Hl7ErrorCode.SEGMENT_SEQUENCE,
            "segment 3 'pv1||I",
        ),
    ],
)
def test_bad_messages_raise_an_error_naming_segment_and_field(
    mutate: object, location: str, code: Hl7ErrorCode, words: str
) -> None:
    """Each defect is reported with its ERR location, table 0357 code and a clear message."""
    assert callable(mutate)
    error = _error(mutate(MDC_CUFF))
    assert words in error.text
    assert error.location == location
    assert error.code is code


def test_structured_numeric_values() -> None:
    """SN '=^80' is a reading; SN with a comparator ('>^80') is refused naming OBX-5."""
    ok = MDC_CUFF.replace("OBX|3|NM|", "OBX|3|SN|").replace("|80|", "|=^80|")
    assert parse_oru(ok.encode(), now=NOW).observations[Parameter.MAP].value == 80
    bad = MDC_CUFF.replace("OBX|3|NM|", "OBX|3|SN|").replace("|80|", "|>^80|")
    error = _error(bad)
    assert "comparator '>'" in error.text
    assert error.location == "OBX^3^5"


@given(st.text(alphabet="|^~\\&\r#xX0OBXMSH", max_size=60))
@settings(max_examples=300)
def test_fuzzed_msh_headers_only_raise_message_error(tail: str) -> None:
    """Whatever follows 'MSH', the parser answers with MessageError or a sample, nothing else."""
    with contextlib.suppress(MessageError):
        parse_oru(("MSH" + tail).encode(), now=NOW)


def test_message_with_only_unknown_codes_is_an_error() -> None:
    """An ORU whose OBX carry no vital this gateway tracks is answered as an error."""
    head = MDC_CUFF.split("OBX|1", maxsplit=1)[0]
    text = head + "OBX|1|NM|150344^MDC_TEMP^MDC||36.6|268192^MDC_DIM_DEGC^MDC"
    assert "no OBX carries MAP" in _error(text).text


def test_non_utf8_payload_is_an_error() -> None:
    """Bytes that are not UTF-8 are refused, naming the offset."""
    with pytest.raises(MessageError, match="not valid UTF-8 \\(byte 4\\)"):
        parse_oru(b"MSH|\xff\xfe", now=NOW)


@pytest.mark.parametrize("coding", ["MDC", "LN"])
def test_build_then_parse_round_trips(coding: str) -> None:
    """What the simulator builds, the driver parses back to the same values and times."""
    at = NOW - timedelta(seconds=3)
    values = {
        Parameter.MAP: (Decimal(74), at),
        Parameter.SBP: (Decimal(104), at),
        Parameter.DBP: (Decimal(59), at),
        Parameter.HR: (Decimal(92), at),
        Parameter.SPO2: (Decimal(97), at),
    }
    payload = build_oru(
        control_id="x|1", sent_at=NOW, values=values, bed="bed^1", patient_id="p1", coding=coding
    )
    sample = parse_oru(payload, now=NOW)
    assert {p: (o.value, o.at) for p, o in sample.observations.items()} == values
    assert sample.bed == "bed^1"  # escaped on the way out, unescaped on the way in
    assert sample.control_id == "x|1"


@given(
    values=st.fixed_dictionaries(
        {
            Parameter.MAP: st.integers(0, 400),
            Parameter.HR: st.decimals(0, 400, places=1),
            Parameter.SPO2: st.integers(0, 100),
        }
    ),
    bed=st.text(alphabet=PRINTABLE, min_size=1, max_size=20),
    control_id=st.text(alphabet=PRINTABLE, min_size=1, max_size=20),
    coding=st.sampled_from(["MDC", "LN"]),
)
@settings(max_examples=200)
def test_any_plausible_reading_round_trips(
    values: dict[Parameter, Decimal | int], bed: str, control_id: str, coding: str
) -> None:
    """Any in-range values, any bed text and control id (delimiters included) survive
    build -> parse unchanged."""
    payload = build_oru(
        control_id=control_id,
        sent_at=NOW,
        values={p: (v, NOW) for p, v in values.items()},
        bed=bed,
        coding=coding,
    )
    sample = parse_oru(payload, now=NOW)
    assert {p: o.value for p, o in sample.observations.items()} == {
        p: Decimal(v) for p, v in values.items()
    }
    assert sample.control_id == control_id
    assert sample.bed == bed


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_arbitrary_text_only_ever_raises_message_error(text: str) -> None:
    """No input makes the parser raise anything but MessageError (so the listener can AE it)."""
    with contextlib.suppress(MessageError):
        parse_oru(text.encode("utf-8", "surrogatepass"), now=NOW)


@given(
    st.lists(st.sampled_from(["|", "^", "~", "\\", "&", "\r", "OBX", "5", "X", "MSH"]), max_size=60)
)
@settings(max_examples=300)
def test_delimiter_soup_after_a_valid_header_only_raises_message_error(parts: list[str]) -> None:
    """Random delimiters and segment names after a good MSH never escape as other errors."""
    text = MDC_CUFF.split("PID", maxsplit=1)[0] + "".join(parts)
    with contextlib.suppress(MessageError):
        parse_oru(text.encode(), now=NOW)


def test_dtm_parsing_is_strict_and_keeps_offsets() -> None:
    """DTM with offset converts to UTC; precision may stop early; garbage is refused."""
    assert parse_dtm("20261126120000.5-0130") == datetime(
        2026, 11, 26, 13, 30, 0, 500000, tzinfo=UTC
    )
    assert parse_dtm("2026112612") == datetime(2026, 11, 26, 12, tzinfo=UTC)
    for bad in ("20261126abc", "2026-11-26", "20261332", "202611261200+2500"):
        with pytest.raises(ValueError, match=r"DTM|valid|range"):
            parse_dtm(bad)
    assert format_dtm(NOW) == "20261126120000.000+0000"


def _stamped(ahead_s: float, *, obx_time: bool = True) -> bytes:
    at = NOW + timedelta(seconds=ahead_s)
    payload = build_oru(control_id="f-1", sent_at=NOW, values={Parameter.MAP: (50, at)})
    if not obx_time:  # the OBX carries no OBX-14: the time comes from OBR-7
        payload = payload.replace(f"|||{format_dtm(at)}".encode(), b"").replace(
            f"|||{format_dtm(NOW)}\r".encode(), f"|||{format_dtm(at)}\r".encode()
        )
    return payload


def test_a_reading_60_s_ahead_is_accepted_and_carries_the_receipt_time() -> None:
    """The skew limit is inclusive; the sample records the gateway clock it was read at."""
    sample = parse_oru(_stamped(60), now=NOW)
    assert sample.observations[Parameter.MAP].at == NOW + timedelta(seconds=60)
    assert sample.received_at == NOW


@pytest.mark.parametrize(
    ("obx_time", "location", "words"),
    [
        (True, "OBX^1^14", "OBX[1]-14 observation time 2026-11-26T12:04:50+00:00 of MAP is 290 s"),
        (False, "OBR^1^7", "OBR-7 (for OBX[1]) observation time 2026-11-26T12:04:50+00:00"),
    ],
)
def test_a_reading_stamped_more_than_60_s_ahead_is_refused_naming_field_and_skew(
    obx_time: bool, location: str, words: str
) -> None:
    """290 s ahead (the hostile tester's message) is refused; the error names the field the
    time came from, the skew and the limit."""
    error = _error(_stamped(290, obx_time=obx_time).decode())
    assert error.location == location
    assert words in error.text
    assert "290 s ahead of the gateway clock (limit 60 s)" in error.text
    just_over = _error(_stamped(60.5).decode())
    assert "60.5 s ahead of the gateway clock (limit 60 s)" in just_over.text
