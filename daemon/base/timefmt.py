"""RFC 3339 timestamps as the MQTT contract spells them: UTC, ``Z``, milliseconds.

Every time in a published payload goes through :func:`format_ts`; every time read from a
client goes through :func:`parse_ts`, which insists on an explicit zone (a naive time is
ambiguous at a bedside that may not share the sender's zone).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# RFC 3339 section 5.6 date-time; "T"/"t"/" " separator, fraction of any length, Z or offset.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def format_ts(when: datetime) -> str:
    """``2026-11-26T17:18:00.123Z``: UTC, milliseconds (truncated), ``Z`` suffix.

    Raises ``ValueError`` for a naive datetime: it would silently mean local time.
    """
    utc = at_ms(when)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def at_ms(when: datetime) -> datetime:
    """The instant :func:`format_ts` spells, as a datetime: UTC, truncated to milliseconds
    (``parse_ts(format_ts(t)) == at_ms(t)``), without formatting and parsing text (a
    ``strftime`` costs ~7 us: the gate's check requests carry up to 64 of them).

    Raises ``ValueError`` for a naive datetime: it would silently mean local time.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("format_ts needs a timezone-aware datetime")
    utc = when.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 date-time with a zone into an aware UTC datetime.

    Raises ``ValueError`` naming the problem for anything else (no zone, bad shape, out of
    range). Fractions beyond microseconds are truncated.
    """
    if not _RFC3339.match(text):
        raise ValueError(f"not an RFC 3339 date-time with a zone: {text[:40]!r}")
    head, sep, frac_zone = text.partition(".")
    if sep:
        digits = re.match(r"\d*", frac_zone).group()  # type: ignore[union-attr]
        zone = frac_zone[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    text = text.replace("z", "Z").replace("t", "T").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None
    return parsed.astimezone(UTC)


def human_age(seconds: float) -> str:
    """How long ago, rounded for people: ``just now``, ``11 s ago``, ``3 min ago``, ``2 h ago``,
    ``3 d ago`` (whole units, rounded down; a time in the future reads ``just now``)."""
    whole = int(seconds) if seconds > 0 else 0
    if whole < 1:
        return "just now"
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if whole >= size:
            return f"{whole // size} {unit} ago"
    return f"{whole} s ago"
