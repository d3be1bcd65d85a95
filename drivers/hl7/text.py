"""HL7 v2 escaping of free text placed into a field (default delimiters ``|^~\\&``)."""

from __future__ import annotations

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(text: str) -> str:
    """Escape delimiters; line breaks and other control characters become spaces."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)
