"""HL7 acknowledgements: build the ACK the gateway returns, read the ACK a monitor receives.

Built by hand rather than with ``hl7.Message.create_ack`` because that reads the wall clock
(``datetime.utcnow``) and needs a parsed message; an ``AE`` must also be sent for input that
never parsed. ``now`` is an argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from drivers.hl7.dtm import format_dtm
from drivers.hl7.errors import MessageError
from drivers.hl7.text import escape

_MAX_TEXT = 200  # MSA-3 / ERR-8 text is cut to this many characters


class AckCode(enum.Enum):
    """MSA-1 acknowledgment codes (HL7 table 0008, original mode)."""

    AA = "AA"  # accepted
    AE = "AE"  # error: the message named in MSA-2 was not applied
    AR = "AR"  # rejected


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What an ACK copies from the message it answers (all optional for unparseable input)."""

    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger: str = "R01"
    version: str = "2.6"


def peek_header(payload: bytes) -> MessageHeader:
    """Best-effort read of MSH-3..6, 9.2, 10 and 12 (for the ACK of any input); never raises."""
    text = payload[:4096].decode("utf-8", errors="replace")
    first = text.replace("\n", "\r").split("\r", 1)[0]
    if len(first) < 5 or not first.startswith("MSH"):
        return MessageHeader()
    sep, comp = first[3], first[4]
    fields = ["MSH", sep, *first[4:].split(sep)]

    def get(n: int) -> str:
        return fields[n].split(comp)[0].strip()[:64] if n < len(fields) else ""

    event = fields[9].split(comp) if len(fields) > 9 else []
    trigger = event[1].strip()[:8] if len(event) > 1 else ""
    return MessageHeader(
        control_id=get(10),
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        trigger=trigger or "R01",
        version=get(12) or "2.6",
    )


def build_ack(
    header: MessageHeader,
    *,
    now: datetime,
    ack_control_id: str,
    error: MessageError | None = None,
    application: str = "INFUSIOND",
    facility: str = "GATEWAY",
) -> bytes:
    """``AA`` when ``error`` is None, else ``AE`` with MSA-3 text and an ``ERR`` segment.

    ERR carries ERR-2 location (``OBX^3^5``), ERR-3 the table 0357 code, ERR-4 severity ``E``
    and ERR-8 the same text as MSA-3, so old (v2.3 MSA-3) and new (v2.5+ ERR) readers see it.
    """
    msh = (
        f"MSH|^~\\&|{escape(header.receiving_application or application)}|"
        f"{escape(header.receiving_facility or facility)}|{escape(header.sending_application)}|"
        f"{escape(header.sending_facility)}|{format_dtm(now)}||"
        f"ACK^{escape(header.trigger)}^ACK|{escape(ack_control_id)}|P|{escape(header.version)}"
    )
    lines = [msh]
    if error is None:
        lines.append(f"MSA|{AckCode.AA.value}|{escape(header.control_id)}")
    else:
        text = escape(error.text[:_MAX_TEXT])
        lines.append(f"MSA|{AckCode.AE.value}|{escape(header.control_id)}|{text}")
        location = "^".join(escape(p) for p in error.location.split("^")) if error.location else ""
        lines.append(
            f"ERR||{location}|{error.code.code}^{escape(error.code.text)}^HL70357|E||||{text}"
        )
    return ("\r".join(lines) + "\r").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement as read by a sender."""

    code: AckCode
    control_id: str  # MSA-2: the control id of the acknowledged message
    text: str = ""  # MSA-3, else ERR-8
    location: str = ""  # ERR-2


def parse_ack(payload: bytes) -> Ack:
    """Read an ACK. Raises MessageError when it is not one (no MSA, unknown MSA-1)."""
    text = payload.decode("utf-8", errors="replace").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s]
    if not segments or not segments[0].startswith("MSH|"):
        raise MessageError("ACK does not start with MSH|", segment="MSH")
    msa = next((s.split("|") for s in segments if s.startswith("MSA|")), None)
    if msa is None:
        raise MessageError("ACK has no MSA segment", segment="MSA")
    try:
        code = AckCode(msa[1].strip() if len(msa) > 1 else "")
    except ValueError:
        raise MessageError(
            f"MSA-1 {msa[1]!r} is not AA, AE or AR", segment="MSA", field=1
        ) from None
    err = next((s.split("|") for s in segments if s.startswith("ERR|")), None)
    detail = msa[3] if len(msa) > 3 else ""
    if not detail and err is not None and len(err) > 8:
        detail = err[8]
    location = err[2] if err is not None and len(err) > 2 else ""
    return Ack(code, msa[2] if len(msa) > 2 else "", _unescape(detail), location)


def _unescape(text: str) -> str:
    for raw, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(esc, raw)
    return text.replace("\\E\\", "\\")
