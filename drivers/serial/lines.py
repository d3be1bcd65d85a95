"""Line framing for text protocols (lines ended by CR, LF or CR LF), capped and resynchronising.

:meth:`LineStream.pop_line` yields each complete line; a line holding a byte that is not
printable ASCII, or longer than ``max_line``, is discarded and reported as one FrameError, and
the bytes after it are parsed afresh (a garbled line never eats the next one). What follows the
last line break is the *tail*: prompt-terminated protocols read their prompt there.
"""

from __future__ import annotations

import re

from drivers.errors import FrameError
from drivers.serial.buffer import CappedBuffer

_BREAKS = re.compile(rb"[\r\n]")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


class LineStream(CappedBuffer):
    """A capped buffer read line by line."""

    def __init__(self, cap: int = 512, max_line: int = 96) -> None:
        if cap < 2 * max_line:
            raise ValueError(f"stream cap {cap} cannot hold two lines of {max_line} bytes")
        super().__init__(cap)
        self.max_line = max_line

    def pop_line(self) -> str | None:
        """The next complete non-empty line, None when none is complete (see module doc)."""
        self._check_overflow()
        while True:
            self._skip_breaks()
            m = _BREAKS.search(self._buf)
            if m is None:
                if len(self._buf) > self.max_line:
                    raw = bytes(self._buf[:16])
                    self._buf.clear()
                    raise FrameError(f"line longer than {self.max_line} bytes: {raw!r}...")
                return None
            raw = bytes(self._buf[: m.start()])
            del self._buf[: m.end()]
            if not raw:
                continue
            return _text(raw, self.max_line)

    def tail(self) -> str | None:
        """The text after the last line break if it is printable ASCII (else None)."""
        self._skip_breaks()
        raw = bytes(self._buf)
        if _PRINTABLE.fullmatch(raw) is None:
            return None
        return raw.decode("ascii")

    def _skip_breaks(self) -> None:
        i = 0
        while i < len(self._buf) and self._buf[i] in b"\r\n":
            i += 1
        del self._buf[:i]


def _text(raw: bytes, max_line: int) -> str:
    if len(raw) > max_line:
        raise FrameError(f"line longer than {max_line} bytes: {raw[:16]!r}...")
    if _PRINTABLE.fullmatch(raw) is None:
        raise FrameError(f"garbled line (not printable ASCII): {raw[:32]!r}")
    return raw.decode("ascii")
