"""IHE PCD PIV (PCD-03): read an RGV^O15 infusion order, write its RRG^O16 answer. Pure.

What is read (IHE PCD TF vol. 2, PCD-03; every other field is ignored):

- MSH-9 ``RGV^O15``, MSH-10 the control id (MSA-2 of the answer);
- PID-3.1 the patient id, PV1-3.3 the bed (both optional);
- ORC-2.1 the order id (required), ORC-12.1 the ordering provider;
- RXG-4 the drug (CWE .2 text, else .1), RXG-5 the VTBI with RXG-7 its unit (optional),
  RXG-15/16 the ordered dose or rate and its unit (required), RXG-17/18 the concentration
  and its unit (required);
- RXC with RXC-1 ``B`` (base): RXC-2 the diluent (optional);
- OBX whose OBX-3 is the pump VMD/MDS (``MDC_DEV_PUMP_INFUS_*`` or 69985/69986): OBX-18.1
  names the target pump (required); OBX ``MDC_ATTR_PT_WEIGHT`` (68063): weight in kg.

Numbers are strict decimals (no exponent, no sign but ``-``, at most 16 characters); a field
that is missing or malformed raises :class:`MessageError` naming segment and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from drivers.hl7.ack import AckCode
from drivers.hl7.dtm import format_dtm
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.text import escape

_NUMBER = re.compile(r"^-?\d{1,9}(\.\d{1,6})?$")
_PUMP_DEVICE = {"69985", "69986", "MDC_DEV_PUMP_INFUS_MDS", "MDC_DEV_PUMP_INFUS_VMD"}
_WEIGHT = {"68063", "MDC_ATTR_PT_WEIGHT"}
_MAX_TEXT = 64
PIV_PROFILE = "IHE_PCD_PIV_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.3.1^ISO"
#: MSH-21 of the RRG^O16 answer: the TF assigns it its own OID (vol. 2, "MSH-21")
PIV_ANSWER_PROFILE = "IHE_PCD_PIV_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.3.2^ISO"


@dataclass(frozen=True, slots=True)
class OrderedAmount:
    """A value and its unit as ordered (UCUM text)."""

    value: Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class PivOrder:
    """One infusion order as the EHR sent it."""

    control_id: str
    order_id: str
    pump_id: str
    drug: str
    concentration: OrderedAmount
    dose: OrderedAmount  # a dose rate (ug/kg/min...) or a rate in mL/h
    ordered_by: str = ""
    diluent: str | None = None
    vtbi: OrderedAmount | None = None
    weight_kg: Decimal | None = None
    patient_id: str | None = None
    bed: str | None = None
    sending_application: str = ""
    sending_facility: str = ""


class _Msg:
    def __init__(self, payload: bytes) -> None:
        text = payload.decode("utf-8", errors="strict").replace("\n", "\r")
        self.segments = [s.split("|") for s in text.split("\r") if s]
        if not self.segments or self.segments[0][0] != "MSH" or len(self.segments[0][0]) != 3:
            raise MessageError("message does not start with MSH", segment="MSH")
        self.segments[0] = ["MSH", "|", *self.segments[0][1:]]

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    def one(self, name: str, *, required: bool = True) -> list[str]:
        found = self.all(name)
        if not found and required:
            raise MessageError(
                f"{name} segment missing",
                segment=name,
                code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            )
        return found[0] if found else []


def _comp(seg: list[str], n: int, c: int = 0) -> str:
    if n >= len(seg):
        return ""
    parts = seg[n].split("~")[0].split("^")
    return _unescape(parts[c].strip()) if c < len(parts) else ""


def _unescape(text: str) -> str:
    for raw, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(esc, raw)
    return text.replace("\\E\\", "\\")


def _text(seg: list[str], name: str, n: int, c: int = 0, *, label: str) -> str:
    value = _comp(seg, n, c)
    if not value:
        raise MessageError(
            f"{name}-{n} {label} is missing",
            segment=name,
            field=n,
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    if len(value) > _MAX_TEXT:
        raise MessageError(
            f"{name}-{n} {label} is {len(value)} characters (limit {_MAX_TEXT})",
            segment=name,
            field=n,
        )
    return value


def _number(seg: list[str], name: str, n: int, *, label: str) -> Decimal:
    raw = _text(seg, name, n, label=label)
    if not _NUMBER.match(raw):
        raise MessageError(
            f"{name}-{n} {label} {raw!r} is not a decimal number", segment=name, field=n
        )
    return Decimal(raw)


def _unit(seg: list[str], name: str, n: int, *, label: str) -> str:
    return _comp(seg, n, 0) or _text(seg, name, n, 1, label=label)


def parse_rgv(payload: bytes) -> PivOrder:
    """Read one RGV^O15. Raises MessageError naming the segment and field at fault."""
    try:
        msg = _Msg(payload)
    except UnicodeDecodeError:
        raise MessageError("message is not UTF-8", segment="MSH") from None
    msh = msg.segments[0]
    mtype = "^".join(msh[9].split("^")[:2]) if len(msh) > 9 else ""
    if mtype != "RGV^O15":
        raise MessageError(
            f"MSH-9 {mtype!r}: this port takes RGV^O15 (IHE PCD PIV) only",
            segment="MSH",
            field=9,
            code=Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        )
    control_id = _text(msh, "MSH", 10, label="message control id")
    orc = msg.one("ORC")
    rxg = msg.one("RXG")
    pid = msg.one("PID", required=False)
    pv1 = msg.one("PV1", required=False)
    pump_id = ""
    weight: Decimal | None = None
    for obx in msg.all("OBX"):
        ident = {_comp(obx, 3, 0), _comp(obx, 3, 1)}
        if ident & _PUMP_DEVICE:
            pump_id = _text(obx, "OBX", 18, label="target pump (equipment instance id)")
        elif ident & _WEIGHT:
            weight = _number(obx, "OBX", 5, label="patient weight")
            unit = _comp(obx, 6, 0) or _comp(obx, 6, 1)
            if unit not in {"kg", "263875", "MDC_DIM_KILO_G"}:
                raise MessageError(f"OBX-6 weight unit {unit!r} is not kg", segment="OBX", field=6)
    if not pump_id:
        raise MessageError(
            "no OBX names the target pump (OBX-3 MDC_DEV_PUMP_INFUS_VMD, OBX-18 pump id)",
            segment="OBX",
            code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
        )
    diluent = next(
        (_comp(rxc, 2, 1) or _comp(rxc, 2, 0) for rxc in msg.all("RXC") if _comp(rxc, 1) == "B"),
        None,
    )
    vtbi = None
    if _comp(rxg, 5):
        vtbi = OrderedAmount(
            _number(rxg, "RXG", 5, label="VTBI"), _unit(rxg, "RXG", 7, label="VTBI unit")
        )
    return PivOrder(
        control_id=control_id,
        order_id=_text(orc, "ORC", 2, label="placer order number"),
        pump_id=pump_id,
        drug=_text(rxg, "RXG", 4, 1 if _comp(rxg, 4, 1) else 0, label="drug (give code)"),
        concentration=OrderedAmount(
            _number(rxg, "RXG", 17, label="concentration (give strength)"),
            _unit(rxg, "RXG", 18, label="concentration unit"),
        ),
        dose=OrderedAmount(
            _number(rxg, "RXG", 15, label="dose or rate (give rate amount)"),
            _unit(rxg, "RXG", 16, label="dose or rate unit"),
        ),
        ordered_by=_comp(orc, 12, 0),
        diluent=diluent or None,
        vtbi=vtbi,
        weight_kg=weight,
        patient_id=_comp(pid, 3) or None,
        bed=_comp(pv1, 3, 2) or None,
        sending_application=_comp(msh, 3),
        sending_facility=_comp(msh, 4),
    )


def build_rrg(
    *,
    answers: str,
    code: AckCode,
    now: datetime,
    control_id: str,
    order_id: str = "",
    patient_id: str = "",
    text: str = "",
    error: Hl7ErrorCode = Hl7ErrorCode.APPLICATION_ERROR,
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """RRG^O16 for the order whose MSH-10 is ``answers``: MSA-1 ``code``; for AE/AR an ERR
    with ``text`` (the reason: rule ids, unknown pump, bad field); ORC-1 ``OK`` (taken for
    confirmation) or ``UA`` (unable to accept) with the order id."""
    lines = [
        (
            f"MSH|^~\\&|INFUSIOND||{escape(receiving_application)}|"
            f"{escape(receiving_facility)}|{format_dtm(now)}||RRG^O16^RRG_O16|"
            f"{escape(control_id)}|P|2.6|||NE|NE||UNICODE UTF-8|||{PIV_ANSWER_PROFILE}"
        ),
        f"MSA|{code.value}|{escape(answers)}"
        + (f"|{escape(text[:200])}" if code is not AckCode.AA and text else ""),
    ]
    if code is not AckCode.AA:
        lines.append(f"ERR|||{error.code}^{escape(error.text)}^HL70357|E||||{escape(text[:200])}")
    if order_id:
        if patient_id:
            lines.append(f"PID|||{escape(patient_id)}||^^^^^^U")
        status = "OK" if code is AckCode.AA else "UA"
        lines.append(f"ORC|{status}|{escape(order_id)}")
    return ("\r".join(lines) + "\r").encode("utf-8")


def build_rgv(
    *,
    control_id: str,
    now: datetime,
    order_id: str,
    pump_id: str,
    drug: str,
    concentration: tuple[str, str],
    dose: tuple[str, str],
    ordered_by: str = "",
    diluent: str | None = None,
    vtbi: tuple[str, str] | None = None,
    weight_kg: str | None = None,
    patient_id: str = "",
    bed: str = "",
) -> bytes:
    """An RGV^O15 as an EHR sends it (the EHR simulator and tests use this)."""
    rxg = ["RXG", "1", "", "", f"^{escape(drug)}^99EHR"] + [""] * 14
    if vtbi is not None:
        rxg[5], rxg[7] = escape(vtbi[0]), f"{escape(vtbi[1])}^{escape(vtbi[1])}^UCUM"
    rxg[15], rxg[16] = escape(dose[0]), f"{escape(dose[1])}^{escape(dose[1])}^UCUM"
    rxg[17] = escape(concentration[0])
    rxg[18] = f"{escape(concentration[1])}^{escape(concentration[1])}^UCUM"
    lines = [
        (
            f"MSH|^~\\&|EHR-SIM|SIMLAB|INFUSIOND||{format_dtm(now)}||RGV^O15^RGV_O15|"
            f"{escape(control_id)}|P|2.6|||AL|ER||UNICODE UTF-8|||{PIV_PROFILE}"
        ),
        f"PID|||{escape(patient_id)}||^^^^^^U",
        f"PV1||I|^^{escape(bed)}",
        f"ORC|NW|{escape(order_id)}||||||||||{escape(ordered_by)}",
        f"TQ1|1||||||{format_dtm(now)}",
        "|".join(rxg),
        "RXR|IV^Intravenous^HL70162",
    ]
    if diluent:
        lines.append(f"RXC|B|^{escape(diluent)}^99EHR|1|mL^mL^UCUM")
    n = 1
    if weight_kg is not None:
        lines.append(
            f"OBX|{n}|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||{escape(weight_kg)}|kg^kg^UCUM|||||F"
        )
        n += 1
    lines.append(f"OBX|{n}||69986^MDC_DEV_PUMP_INFUS_VMD^MDC|1.1|||||||F|||||||{escape(pump_id)}")
    return ("\r".join(lines) + "\r").encode("utf-8")
