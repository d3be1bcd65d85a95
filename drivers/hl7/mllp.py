"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``<VT> payload <FS><CR>``.

Why not ``hl7.mllp``'s stream reader: it grows the asyncio buffer up to a limit and then
clears *everything* (losing a good frame that followed), drops a whole block when bytes precede
the start block, and starts fire-and-forget tasks for each connection. This codec is pure (no
I/O), keeps at most ``max_frame`` payload bytes per connection, and resynchronises on the next
start block: bytes outside a frame, a frame cut short by a new ``<VT>``, an oversize frame (its
remainder is skipped up to its end block) and an ``<FS>`` not followed by ``<CR>`` are all
reported as :class:`Discarded` and never raise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.errors import FrameError

START_BLOCK = 0x0B  # <VT>
END_BLOCK = 0x1C  # <FS>
CARRIAGE_RETURN = 0x0D  # <CR>
TRAILER = bytes((END_BLOCK, CARRIAGE_RETURN))

#: default cap on one message's payload; an ORU^R01 with a few vitals is well under 4 KiB
DEFAULT_MAX_FRAME = 64 * 1024


@dataclass(frozen=True, slots=True)
class MllpFrame:
    """One MLLP block; ``payload`` is the HL7 message bytes (never contains VT or FS)."""

    payload: bytes

    def serialize(self) -> bytes:
        """The bytes on the wire. Raises FrameError if the payload holds a framing byte."""
        for byte, name in ((START_BLOCK, "<VT> 0x0b"), (END_BLOCK, "<FS> 0x1c")):
            at = self.payload.find(byte)
            if at >= 0:
                raise FrameError(f"MLLP payload contains {name} at byte {at}; cannot frame it")
        return bytes((START_BLOCK,)) + self.payload + TRAILER

    @classmethod
    def deserialize(
        cls, data: bytes, max_frame: int = DEFAULT_MAX_FRAME
    ) -> tuple[MllpFrame, bytes]:
        """Strictly decode one frame at the start of ``data``; return it and the rest.

        Raises FrameError naming the byte offset when ``data`` does not start with ``<VT>``,
        when the frame is incomplete, too long, or its ``<FS>`` is not followed by ``<CR>``.
        """
        if not data:
            raise FrameError("MLLP: no data (expected <VT> 0x0b)")
        if data[0] != START_BLOCK:
            raise FrameError(f"MLLP: byte 0 is 0x{data[0]:02x}, expected start block <VT> 0x0b")
        end = data.find(END_BLOCK, 1, max_frame + 2)
        nested = data.find(START_BLOCK, 1, end if end >= 0 else max_frame + 2)
        if nested >= 0:
            raise FrameError(f"MLLP: start block <VT> inside the frame at byte {nested}")
        if end < 0:
            if len(data) > max_frame + 1:
                raise FrameError(f"MLLP: frame exceeds {max_frame} bytes without an end block")
            raise FrameError(f"MLLP: incomplete frame ({len(data)} bytes, no end block <FS>)")
        if end + 1 >= len(data):
            raise FrameError(f"MLLP: incomplete frame (end block at byte {end} without <CR>)")
        if data[end + 1] != CARRIAGE_RETURN:
            raise FrameError(
                f"MLLP: byte {end + 1} after end block is 0x{data[end + 1]:02x}, expected <CR>"
            )
        return cls(bytes(data[1:end])), bytes(data[end + 2 :])


class DiscardReason(enum.Enum):
    """Why the decoder threw bytes away."""

    OUTSIDE_FRAME = "bytes outside a frame (before a start block)"
    INTERRUPTED = "frame interrupted by a new start block"
    TOO_LONG = "frame exceeds the size cap"
    BAD_TRAILER = "end block not followed by carriage return"


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes the decoder dropped while resynchronising, and why."""

    reason: DiscardReason
    size: int


class _State(enum.Enum):
    HUNT = enum.auto()  # looking for <VT>
    FRAME = enum.auto()  # inside a frame, collecting payload
    SKIP = enum.auto()  # inside an oversize frame, dropping bytes up to its end


class MllpDecoder:
    """Incremental, capped MLLP stream decoder (one per connection).

    ``feed(data)`` returns the complete frames and the discards in stream order. The internal
    buffer never holds more than ``max_frame + 1`` bytes, whatever the input.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be >= 1")
        self.max_frame = max_frame
        self._state = _State.HUNT
        self._buf = bytearray()  # payload so far (+ a trailing <FS> awaiting its <CR>)
        self._skipped = 0  # bytes dropped in HUNT/SKIP not yet reported

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[MllpFrame | Discarded]:
        """Consume ``data``; return frames completed and bytes discarded, in order."""
        out: list[MllpFrame | Discarded] = []
        pos = 0
        n = len(data)
        while pos < n:
            if self._state is _State.HUNT:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self._skipped += n - pos
                    pos = n
                    break
                self._skipped += start - pos
                self._flush_skipped(out, DiscardReason.OUTSIDE_FRAME)
                self._state = _State.FRAME
                self._buf.clear()
                pos = start + 1
            elif self._state is _State.SKIP:
                pos = self._skip(data, pos, out)
            else:
                pos = self._collect(data, pos, out)
        if self._state is _State.HUNT:
            self._flush_skipped(out, DiscardReason.OUTSIDE_FRAME)
        return out

    def _flush_skipped(self, out: list[MllpFrame | Discarded], reason: DiscardReason) -> None:
        if self._skipped:
            out.append(Discarded(reason, self._skipped))
            self._skipped = 0

    def _skip(self, data: bytes, pos: int, out: list[MllpFrame | Discarded]) -> int:
        """Drop an oversize frame's bytes up to its trailer (or a new start block)."""
        n = len(data)
        for i in range(pos, n):
            byte = data[i]
            if byte == START_BLOCK:
                self._skipped += i - pos
                self._flush_skipped(out, DiscardReason.TOO_LONG)
                self._state = _State.FRAME
                self._buf.clear()
                return i + 1
            if byte == CARRIAGE_RETURN and self._buf == b"\x1c":
                self._skipped += i - pos + 1
                self._buf.clear()
                self._flush_skipped(out, DiscardReason.TOO_LONG)
                self._state = _State.HUNT
                return i + 1
            self._buf[:] = b"\x1c" if byte == END_BLOCK else b""
        self._skipped += n - pos
        return n

    def _collect(self, data: bytes, pos: int, out: list[MllpFrame | Discarded]) -> int:
        """Append payload bytes until the trailer; enforce the cap; resync on <VT>."""
        n = len(data)
        if self._buf.endswith(b"\x1c"):  # <FS> seen at the end of the previous chunk
            return self._after_end_block(data, pos, out, len(self._buf) - 1)
        vt = data.find(START_BLOCK, pos)
        fs = data.find(END_BLOCK, pos)
        stop = n if vt < 0 else vt
        if 0 <= fs < stop:
            stop = fs
        room = self.max_frame - len(self._buf)
        if stop - pos > room:
            self._skipped += len(self._buf) + (stop - pos) + 1  # payload + its <VT>
            self._buf.clear()
            self._state = _State.SKIP
            return stop
        self._buf += data[pos:stop]
        if stop == n:
            return n
        if data[stop] == START_BLOCK:
            out.append(Discarded(DiscardReason.INTERRUPTED, len(self._buf) + 1))
            self._buf.clear()
            return stop + 1  # stay in FRAME: this <VT> starts the next frame
        self._buf.append(END_BLOCK)
        return self._after_end_block(data, stop + 1, out, len(self._buf) - 1)

    def _after_end_block(
        self, data: bytes, pos: int, out: list[MllpFrame | Discarded], payload_len: int
    ) -> int:
        if pos >= len(data):
            return pos  # wait for the byte after <FS>
        if data[pos] == CARRIAGE_RETURN:
            out.append(MllpFrame(bytes(self._buf[:payload_len])))
            self._buf.clear()
            self._state = _State.HUNT
            return pos + 1
        out.append(Discarded(DiscardReason.BAD_TRAILER, len(self._buf) + 1))
        self._buf.clear()
        self._state = _State.HUNT
        return pos  # re-examine this byte: it may be the next <VT>
