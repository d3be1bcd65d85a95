"""HL7 v2 DTM timestamps (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``), strictly.

``hl7.parse_datetime`` matches a prefix and ignores trailing garbage (``20261126abc`` parses);
a vitals timestamp decides staleness, so this parser accepts only the full grammar.
A timestamp without an offset is read in ``assume_tz`` (UTC unless the caller says otherwise).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_DTM = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)


def parse_dtm(text: str, assume_tz: tzinfo = UTC) -> datetime:
    """Parse a DTM into an aware UTC datetime. Raises ValueError naming what is wrong."""
    m = _DTM.match(text.strip())
    if m is None:
        raise ValueError(f"'{text}' is not an HL7 DTM (YYYYMMDDHHMMSS[.SSSS][+ZZZZ])")
    g = m.groupdict()
    fraction = g["f"] or ""
    micro = int((fraction + "000000")[:6]) if fraction else 0
    tz: tzinfo = assume_tz
    if g["tz"]:
        sign = -1 if g["tz"][0] == "-" else 1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][3:5])
        if hours > 14 or minutes > 59:
            raise ValueError(f"'{text}': offset {g['tz']} out of range")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        value = datetime(
            int(g["y"]),
            int(g["mo"] or 1),
            int(g["d"] or 1),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            micro,
            tzinfo=tz,
        )
    except ValueError as exc:
        raise ValueError(f"'{text}' is not a valid date/time: {exc}") from None
    return value.astimezone(UTC)


def format_dtm(value: datetime) -> str:
    """Format an aware datetime as DTM with milliseconds and a +0000 offset (UTC)."""
    if value.tzinfo is None:
        raise ValueError("format_dtm needs an aware datetime")
    utc = value.astimezone(UTC)
    return utc.strftime("%Y%m%d%H%M%S") + f".{utc.microsecond // 1000:03d}+0000"
