"""ORU^R01 <-> :class:`VitalsSample`: parse what monitors send, build what the simulator sends.

Parsing uses python-hl7 (``hl7.parse``) after a strict check of the MSH header and segment
names, so malformed input is reported as a :class:`MessageError` naming the segment and field
(for the ``AE`` acknowledgement) instead of surfacing as an IndexError from the library. A
message is all or nothing: one bad vitals OBX rejects the whole message and nothing is applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation

import hl7

from drivers.hl7.codes import CodeEntry, CodeTables, code_tables
from drivers.hl7.dtm import format_dtm, parse_dtm
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.sample import Observation, Parameter, VitalsSample
from drivers.hl7.text import escape

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_SKIPPED_STATUS = frozenset({"X", "D", "W"})  # cannot be obtained, deleted, wrong
_NUMERIC_TYPES = frozenset({"NM", "SN", ""})

#: how far ahead of the gateway's clock an observation time may lie (clock skew between monitor
#: and gateway); a reading stamped further ahead is refused, one within it is accepted and the
#: daemon takes it to be no newer than its receipt (see ``VitalsSample.received_at``)
DEFAULT_MAX_FUTURE_S = 60.0


def _decode(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(
            f"message is not valid UTF-8 (byte {exc.start})",
            segment="MSH",
            field=18,
            code=Hl7ErrorCode.DATA_TYPE,
        ) from None
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(line for line in text.split("\r") if line.strip())


def _check_structure(text: str) -> None:
    """Refuse what python-hl7 would misparse: a bad MSH header or a bad segment name."""
    if not text.startswith("MSH"):
        raise MessageError(
            f"message must start with an MSH segment, starts with {text[:3]!r}",
            segment="MSH",
            code=Hl7ErrorCode.SEGMENT_SEQUENCE,
        )
    if len(text) < 8:
        raise MessageError(
            "MSH-1/MSH-2 delimiters missing",
            segment="MSH",
            field=2,
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    sep = text[3]
    end = text.find(sep, 4)
    encoding_chars = text[4:end] if end >= 0 else ""
    delimiters = sep + encoding_chars
    if (
        end < 0
        or not 4 <= len(encoding_chars) <= 5
        or len(set(delimiters)) != len(delimiters)
        or any(ch.isalnum() or ch in "\r\n " for ch in delimiters)
    ):
        raise MessageError(
            f"MSH-1/MSH-2 delimiters {text[3:9]!r} are not a field separator followed by "
            "4 distinct encoding characters",
            segment="MSH",
            field=2,
        )
    for number, line in enumerate(text.split("\r"), start=1):
        name = line[:3]
        if not _SEGMENT_ID.match(name) or (len(line) > 3 and line[3] != sep):
            raise MessageError(
                f"segment {number} {line[:12]!r} does not start with a segment id and '{sep}'",
                segment=name if _SEGMENT_ID.match(name) else "",
                code=Hl7ErrorCode.SEGMENT_SEQUENCE,
            )


def _components(message: hl7.Message, segment: hl7.Segment, field: int) -> list[str]:
    """The components of the first repetition of a field, unescaped ([] when absent)."""
    if field >= len(segment):
        return []
    value = segment[field]
    if not value:
        return []
    first = value[0]
    if isinstance(first, str):
        parts = [first]
    else:
        parts = [c if isinstance(c, str) else (str(c[0]) if c else "") for c in first]
    return [str(message.unescape(p)) for p in parts]


def _first(message: hl7.Message, segment: hl7.Segment, field: int) -> str:
    parts = _components(message, segment, field)
    return parts[0].strip() if parts else ""


def _segments(message: hl7.Message, name: str) -> list[hl7.Segment]:
    return [seg for seg in message if str(seg[0]) == name]


def _time(
    message: hl7.Message,
    segment: hl7.Segment,
    field: int,
    *,
    occurrence: int = 1,
    assume_tz: tzinfo,
) -> datetime | None:
    name = str(segment[0])
    text = _first(message, segment, field)
    if not text:
        return None
    try:
        return parse_dtm(text, assume_tz)
    except ValueError as exc:
        raise MessageError(
            f"{name}-{field} {exc}", segment=name, occurrence=occurrence, field=field
        ) from None


def _numeric_text(message: hl7.Message, obx: hl7.Segment, value_type: str, occ: int) -> str:
    """OBX-5 as text; an SN (comparator^number) must be a plain or '=' number."""
    if value_type != "SN":
        return _first(message, obx, 5)
    parts = _components(message, obx, 5)
    comparator = parts[0].strip() if parts else ""
    if comparator not in ("", "="):
        raise MessageError(
            f"OBX[{occ}]-5 structured value with comparator {comparator!r} is not a reading",
            segment="OBX",
            occurrence=occ,
            field=5,
        )
    if len(parts) > 2 and any(p.strip() for p in parts[2:]):
        raise MessageError(
            f"OBX[{occ}]-5 structured value is a range or ratio, not a reading",
            segment="OBX",
            occurrence=occ,
            field=5,
        )
    return parts[1].strip() if len(parts) > 1 else ""


def _value(
    raw: str, entry: CodeEntry, unit_parts: list[str], *, tables: CodeTables, occ: int
) -> tuple[Decimal, str]:
    where = f"({entry.name})"
    label = entry.parameter.value.upper()
    if not raw:
        raise MessageError(
            f"OBX[{occ}]-5 value of {label} ({entry.name}) is empty",
            segment="OBX",
            occurrence=occ,
            field=5,
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    if not _NUMBER.match(raw):
        raise MessageError(
            f"OBX[{occ}]-5 value {raw[:20]!r} of {label} is not numeric",
            segment="OBX",
            occurrence=occ,
            field=5,
        )
    try:
        value = Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise MessageError(
            f"OBX[{occ}]-5 value {raw[:20]!r} of {label} is not numeric",
            segment="OBX",
            occurrence=occ,
            field=5,
        ) from None
    expected = tables.unit_for(entry.parameter)
    if not any(p.strip() for p in unit_parts):
        raise MessageError(
            f"OBX[{occ}]-6 unit of {label} is missing (expected {expected.ucum})",
            segment="OBX",
            occurrence=occ,
            field=6,
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    unit = tables.find_unit(unit_parts)
    shown = "^".join(unit_parts)[:40]
    if unit is None:
        raise MessageError(
            f"OBX[{occ}]-6 unit {shown!r} of {label} is unknown (expected {expected.ucum})",
            segment="OBX",
            occurrence=occ,
            field=6,
            code=Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
        )
    if entry.parameter not in unit.parameters:
        raise MessageError(
            f"OBX[{occ}]-6 unit {unit.ucum!r} is not a unit of {label} (expected {expected.ucum})",
            segment="OBX",
            occurrence=occ,
            field=6,
            code=Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
        )
    if not unit.minimum <= value <= unit.maximum:
        raise MessageError(
            f"OBX[{occ}]-5 value {value} {unit.ucum} of {label} is outside "
            f"{unit.minimum}..{unit.maximum} {where}",
            segment="OBX",
            occurrence=occ,
            field=5,
        )
    return value, unit.ucum


def parse_oru(
    payload: bytes,
    *,
    now: datetime,
    tables: CodeTables | None = None,
    assume_tz: tzinfo = UTC,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
) -> VitalsSample:
    """Parse one ORU^R01 message into a :class:`VitalsSample`.

    Raises :class:`MessageError` (segment, field, HL7 error code) for anything that cannot be
    accepted: not HL7, not ORU^R01, MSH-9/10/11/12 missing, no vitals OBX, a non-numeric or
    implausible value, an unknown or wrong unit, a bad timestamp, or one more than
    ``max_future_s`` ahead of ``now`` (the AE names the field the time came from and the skew).
    OBX with unknown codes, or with result status X/D/W, are ignored. ``now`` is the gateway's
    clock at receipt and becomes the sample's ``received_at``.
    """
    tables = tables or code_tables()
    text = _decode(payload)
    _check_structure(text)
    try:
        message = hl7.parse(text)
        return _read(message, now, tables, assume_tz, max_future_s)
    except (hl7.HL7Exception, ValueError, IndexError) as exc:  # pragma: no cover - prechecked
        raise MessageError(f"message cannot be parsed: {exc}", segment="MSH") from None


def _check_header(message: hl7.Message, msh: hl7.Segment) -> None:
    """MSH-9 must be ORU^R01; MSH-10, 11 and 12 must be present."""
    msg_type = _components(message, msh, 9)
    kind = msg_type[0].strip() if msg_type else ""
    event = msg_type[1].strip() if len(msg_type) > 1 else ""
    if not kind:
        raise MessageError(
            "MSH-9 message type is missing",
            segment="MSH",
            field=9,
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    if kind != "ORU":
        raise MessageError(
            f"MSH-9 message type {kind!r} is not supported (expected ORU^R01)",
            segment="MSH",
            field=9,
            code=Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        )
    if event != "R01":
        raise MessageError(
            f"MSH-9 trigger event {event!r} is not supported (expected ORU^R01)",
            segment="MSH",
            field=9,
            code=Hl7ErrorCode.UNSUPPORTED_EVENT,
        )
    for field, name in ((10, "message control id"), (11, "processing id"), (12, "version id")):
        if not _first(message, msh, field):
            raise MessageError(
                f"MSH-{field} {name} is missing",
                segment="MSH",
                field=field,
                code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            )


def _patient_and_bed(message: hl7.Message) -> tuple[str | None, str | None]:
    """PID-3 (first identifier) and PV1-3 (bed component, else point of care)."""
    patient_id = None
    pids = _segments(message, "PID")
    if pids:
        patient_id = _first(message, pids[0], 3) or None
    bed = None
    pv1s = _segments(message, "PV1")
    if pv1s:
        location = _components(message, pv1s[0], 3)
        bed_part = location[2].strip() if len(location) > 2 else ""
        bed = bed_part or (location[0].strip() if location else "") or None
    return patient_id, bed


def _read(
    message: hl7.Message,
    now: datetime,
    tables: CodeTables,
    assume_tz: tzinfo,
    max_future_s: float,
) -> VitalsSample:
    msh = message[0]
    _check_header(message, msh)
    control_id = _first(message, msh, 10)
    sent_at = _time(message, msh, 7, assume_tz=assume_tz)
    sender = _first(message, msh, 3)

    patient_id, bed = _patient_and_bed(message)
    obr_time = None
    obrs = _segments(message, "OBR")
    if obrs:
        obr_time = _time(message, obrs[0], 7, assume_tz=assume_tz)
    # where an OBX without OBX-14 takes its time from, for the error location
    fallback: tuple[datetime, str, int] | None = None
    if obr_time is not None:
        fallback = (obr_time, "OBR", 7)
    elif sent_at is not None:
        fallback = (sent_at, "MSH", 7)

    obxs = _segments(message, "OBX")
    if not obxs:
        raise MessageError(
            "no OBX segment: the ORU^R01 carries no observation",
            segment="OBX",
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    chosen: dict[Parameter, tuple[int, Observation]] = {}
    horizon = now + timedelta(seconds=max_future_s)
    for occ, obx in enumerate(obxs, start=1):
        entry = tables.find_code(_components(message, obx, 3))
        if entry is None:
            continue
        if _first(message, obx, 11).upper() in _SKIPPED_STATUS:
            continue
        value_type = _first(message, obx, 2).upper()
        if value_type not in _NUMERIC_TYPES:
            raise MessageError(
                f"OBX[{occ}]-2 value type {value_type!r} of {entry.parameter.value.upper()} "
                "is not numeric (expected NM)",
                segment="OBX",
                occurrence=occ,
                field=2,
            )
        value, unit = _value(
            _numeric_text(message, obx, value_type, occ),
            entry,
            _components(message, obx, 6),
            tables=tables,
            occ=occ,
        )
        stamped = _time(message, obx, 14, occurrence=occ, assume_tz=assume_tz)
        if stamped is not None:
            at, segment, seg_occ, field = stamped, "OBX", occ, 14
        elif fallback is not None:
            (at, segment, field), seg_occ = fallback, 1
        else:
            raise MessageError(
                f"OBX[{occ}]-14 observation time missing (and no OBR-7 or MSH-7)",
                segment="OBX",
                occurrence=occ,
                field=14,
                code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            )
        if at > horizon:
            skew = round((at - now).total_seconds(), 3)
            label = f"OBX[{occ}]-14" if segment == "OBX" else f"{segment}-{field} (for OBX[{occ}])"
            raise MessageError(
                f"{label} observation time {at.isoformat()} of "
                f"{entry.parameter.value.upper()} is {skew:g} s ahead of the gateway clock "
                f"(limit {max_future_s:g} s)",
                segment=segment,
                occurrence=seg_occ,
                field=field,
            )
        previous = chosen.get(entry.parameter)
        if previous is None or entry.rank < previous[0]:
            chosen[entry.parameter] = (entry.rank, Observation(value, unit, at, entry.tag))
    if not chosen:
        raise MessageError(
            "no OBX carries MAP, SBP, DBP, HR or SpO2 with a known MDC or LOINC code",
            segment="OBX",
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    return VitalsSample(
        source=f"hl7:{sender}" if sender else "hl7",
        control_id=control_id,
        observations={p: obs for p, (_, obs) in chosen.items()},
        bed=bed,
        patient_id=patient_id,
        sent_at=sent_at,
        received_at=now,
    )


#: IHE PCD DEC (PCD-01) profile id (MSH-21)
PCD_01_PROFILE = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"


def build_oru(
    *,
    control_id: str,
    sent_at: datetime,
    values: Mapping[Parameter, tuple[Decimal | int | float, datetime]],
    bed: str | None = None,
    patient_id: str | None = None,
    sending_application: str = "INFUSIOND-SIM",
    sending_facility: str = "SIMLAB",
    coding: str = "MDC",
    tables: CodeTables | None = None,
) -> bytes:
    """Build an IHE PCD-01 ORU^R01 (v2.6): MSH-21 profile, PID (PID-3 the patient or bed id,
    PID-5 ``^^^^^^U``), PV1, OBR and one OBX per value with its containment in OBX-4
    (``1.1.1.k``: metric k of the monitor's first channel).

    ``coding`` is ``"MDC"`` (IEEE 11073 codes and MDC units, as monitor gateways send) or
    ``"LN"`` (LOINC codes with UCUM units). The simulator and tests use this; the codes come
    from the same table the parser reads, so the two cannot drift.
    """
    tables = tables or code_tables()
    if coding not in ("MDC", "LN"):
        raise ValueError(f"coding must be 'MDC' or 'LN', got {coding!r}")
    msh = (
        f"MSH|^~\\&|{escape(sending_application)}|{escape(sending_facility)}|INFUSIOND|GATEWAY|"
        f"{format_dtm(sent_at)}||ORU^R01^ORU_R01|{escape(control_id)}|P|2.6|||NE|AL||UNICODE UTF-8"
        f"|||{PCD_01_PROFILE}"
    )
    patient = escape(patient_id or bed or "")
    lines = [
        msh,
        f"PID|||{patient}||^^^^^^U" if patient else "PID|||^^^^^^U||^^^^^^U",
        f"PV1||I|ICU^^{escape(bed or '')}",
        f"OBR|1|||182777000^Monitoring of patient^SCT|||{format_dtm(sent_at)}",
    ]
    for number, (parameter, (value, at)) in enumerate(values.items(), start=1):
        entry = tables.code_for(parameter, coding)
        unit = tables.unit_for(parameter)
        unit_field = (
            f"{unit.mdc}^{unit.mdc_name}^MDC"
            if coding == "MDC"
            else f"{unit.ucum}^{unit.ucum}^UCUM"
        )
        system = "MDC" if coding == "MDC" else "LN"
        lines.append(
            f"OBX|{number}|NM|{entry.code}^{escape(entry.name)}^{system}|1.1.1.{number}"
            f"|{value}|{unit_field}|||||R|||{format_dtm(at)}"
        )
    return ("\r".join(lines) + "\r").encode("utf-8")
