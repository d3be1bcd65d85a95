"""New Era RS-232 frames (commands: drivers/newera/commands.toml), shared by driver and simulator.

Pure: no I/O, no clock. Two framings exist on the same wire:

* **basic mode** -- command ``[addr][COMMAND][params]\\r`` (the pump strips spaces and
  upper-cases), reply ``STX addr(2 digits) status [data] ETX``;
* **safe mode** -- ``STX len payload CRC_hi CRC_lo ETX`` where ``len`` counts the bytes after
  STX (itself, payload, CRC, ETX) and the CRC is CRC-16/XMODEM over the payload. A command's
  payload is the basic command text without CR; a reply's payload is the basic reply body
  (``addr status data``) without STX/ETX.

Frames are frozen dataclasses with ``serialize()`` and ``deserialize(data) -> (frame, rest)``.
``deserialize`` raises :class:`TruncatedFrame` when ``data`` holds only the start of a frame
(wait for more bytes) and :class:`drivers.errors.FrameError` when it can never become one.
The stream readers (:class:`ReplyStream`, :class:`CommandStream`) cap their buffer, never trust
the length byte (it is bounds-checked before use) and resynchronise on the next STX.
"""

from __future__ import annotations

import binascii
import enum
import re
from dataclasses import dataclass
from typing import ClassVar

from drivers.base import AlarmCode
from drivers.errors import FrameError
from drivers.serial.buffer import CappedBuffer

STX = 0x02
ETX = 0x03
CR = 0x0D

#: longest basic reply accepted, STX..ETX inclusive (the longest real one is ~20 bytes)
MAX_BASIC_REPLY = 64
#: longest basic command line accepted before CR
MAX_COMMAND = 64
#: bounds of the safe-mode length byte (payload of 0..60 bytes)
MIN_SAFE_LEN = 4
MAX_SAFE_LEN = 64
#: default cap of a stream reader's buffer
STREAM_CAP = 256

_PRINTABLE = re.compile(r"[\x20-\x7e]*")


class TruncatedFrame(FrameError):
    """The bytes are the beginning of a frame; more are needed (or the frame was cut short)."""


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM: poly 0x1021, init 0, no reflection, no final xor (``SAF0`` -> 0x5543).

    The standard library computes exactly this CRC (``binascii.crc_hqx`` with initial value 0).
    """
    return binascii.crc_hqx(data, 0)


class Status(enum.Enum):
    """The reply's status (prompt) character."""

    INFUSING = "I"
    WITHDRAWING = "W"
    STOPPED = "S"
    PAUSED = "P"
    PAUSE_PHASE = "T"
    USER_WAIT = "U"
    PURGING = "X"
    ALARM = "A"


class Alarm(enum.Enum):
    """The letter after ``A?`` in an alarm reply, with its normalised :class:`AlarmCode`."""

    RESET = "R"
    STALLED = "S"
    COMM_TIMEOUT = "T"
    PROGRAM_ERROR = "E"
    PHASE_OUT_OF_RANGE = "O"

    @property
    def code(self) -> AlarmCode:
        return _ALARM_CODES[self]

    @property
    def meaning(self) -> str:
        return _ALARM_MEANINGS[self]


_ALARM_CODES = {
    Alarm.RESET: AlarmCode.DEVICE_RESET,
    Alarm.STALLED: AlarmCode.STALLED,
    Alarm.COMM_TIMEOUT: AlarmCode.COMM_TIMEOUT,
    Alarm.PROGRAM_ERROR: AlarmCode.PROGRAM_ERROR,
    Alarm.PHASE_OUT_OF_RANGE: AlarmCode.PHASE_OUT_OF_RANGE,
}
_ALARM_MEANINGS = {
    Alarm.RESET: "pump was reset (power interrupted)",
    Alarm.STALLED: "pump motor stalled",
    Alarm.COMM_TIMEOUT: "safe mode communications time out",
    Alarm.PROGRAM_ERROR: "pumping program error",
    Alarm.PHASE_OUT_OF_RANGE: "pumping program phase out of range",
}

#: error replies: the data of the reply, from longest to shortest so that prefixes match last
ERROR_CODES = ("?OOR", "?COM", "?IGN", "?NA", "?")

_COMMAND_TEXT = re.compile(r"(\d{1,2})?([A-Z]{0,3})(.*)")
_REPLY_BODY = re.compile(r"(\d\d)([IWSPTUXA])(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    """One command: ``address`` None means 'no address' (taken by pump 0)."""

    name: str
    params: str = ""
    address: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and not 0 <= self.address <= 99:
            raise ValueError(f"New Era address must be 0..99, got {self.address}")

    def text(self) -> str:
        """The wire text without CR, compact (the pump strips spaces anyway)."""
        prefix = "" if self.address is None else f"{self.address:02d}"
        return f"{prefix}{self.name}{self.params}"

    @classmethod
    def parse(cls, text: str) -> Command:
        """Parse command text as the pump does: spaces stripped, upper-cased."""
        norm = text.replace(" ", "").upper()
        m = _COMMAND_TEXT.fullmatch(norm)
        if m is None:  # pragma: no cover - the pattern matches every string
            raise FrameError(f"unparseable command {text!r}")
        addr, name, params = m.groups()
        return cls(name=name, params=params, address=None if addr is None else int(addr))


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: address, status (or alarm) and data (which may be an error code)."""

    address: int
    status: Status
    data: str = ""
    alarm: Alarm | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 99:
            raise ValueError(f"New Era address must be 0..99, got {self.address}")
        if (self.status is Status.ALARM) != (self.alarm is not None):
            raise ValueError("an alarm reply needs status ALARM and an alarm letter")
        if _PRINTABLE.fullmatch(self.data) is None:
            raise ValueError(f"reply data must be printable ASCII, got {self.data!r}")

    @property
    def error(self) -> str | None:
        """The error code (``?``, ``?NA``, ...) when the data is one, else None."""
        return self.data if self.data in ERROR_CODES else None

    def body(self) -> bytes:
        alarm = "" if self.alarm is None else f"?{self.alarm.value}"
        return f"{self.address:02d}{self.status.value}{alarm}{self.data}".encode("ascii")

    @classmethod
    def parse_body(cls, body: bytes) -> Reply:
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"reply holds non-ASCII bytes: {body!r}") from None
        m = _REPLY_BODY.fullmatch(text)
        if m is None:
            raise FrameError(f"reply {text!r} is not 'addr(2 digits) status [data]'")
        addr, status_char, data = m.groups()
        status = Status(status_char)
        alarm = None
        if status is Status.ALARM:
            if len(data) < 2 or data[0] != "?" or data[1] not in "RSTEO":
                raise FrameError(f"alarm reply {text!r} lacks a known '?<letter>' alarm code")
            alarm, data = Alarm(data[1]), data[2:]
        if _PRINTABLE.fullmatch(data) is None:
            raise FrameError(f"reply data {data!r} holds control characters")
        return cls(address=int(addr), status=status, data=data, alarm=alarm)


@dataclass(frozen=True, slots=True)
class BasicCommandFrame:
    """A basic-mode command line: text then CR."""

    text: str

    def serialize(self) -> bytes:
        return self.text.encode("ascii") + b"\r"

    @classmethod
    def deserialize(cls, data: bytes) -> tuple[BasicCommandFrame, bytes]:
        end = data.find(b"\r", 0, MAX_COMMAND + 1)
        if end < 0:
            if len(data) > MAX_COMMAND:
                raise FrameError(f"command line longer than {MAX_COMMAND} bytes without CR")
            raise TruncatedFrame("command line without CR yet")
        line = data[:end]
        if STX in line:
            raise FrameError("STX inside a basic command line")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"command line holds non-ASCII bytes: {line!r}") from None
        if _PRINTABLE.fullmatch(text) is None:
            raise FrameError(f"command line holds control characters: {text!r}")
        return cls(text), data[end + 1 :]


@dataclass(frozen=True, slots=True)
class BasicReplyFrame:
    """A basic-mode reply: STX body ETX."""

    reply: Reply

    def serialize(self) -> bytes:
        return bytes([STX]) + self.reply.body() + bytes([ETX])

    @classmethod
    def deserialize(cls, data: bytes) -> tuple[BasicReplyFrame, bytes]:
        if not data or data[0] != STX:
            raise FrameError("basic reply does not start with STX")
        end = data.find(ETX, 1, MAX_BASIC_REPLY)
        nxt = data.find(STX, 1, MAX_BASIC_REPLY if end < 0 else end)
        if nxt > 0:
            raise FrameError(f"truncated basic reply {data[:nxt]!r} (new STX before ETX)")
        if end < 0:
            if len(data) >= MAX_BASIC_REPLY:
                raise FrameError(f"basic reply longer than {MAX_BASIC_REPLY} bytes without ETX")
            raise TruncatedFrame(f"basic reply without ETX yet: {data!r}")
        return cls(Reply.parse_body(data[1:end])), data[end + 1 :]


@dataclass(frozen=True, slots=True)
class SafePacket:
    """A safe-mode packet: STX len payload CRC_hi CRC_lo ETX, CRC-16/XMODEM over payload."""

    payload: bytes
    MAX_PAYLOAD: ClassVar[int] = MAX_SAFE_LEN - 4

    def __post_init__(self) -> None:
        if len(self.payload) > self.MAX_PAYLOAD:
            raise ValueError(f"safe-mode payload over {self.MAX_PAYLOAD} bytes")

    def serialize(self) -> bytes:
        crc = crc16_xmodem(self.payload)
        length = len(self.payload) + 4
        return bytes([STX, length]) + self.payload + bytes([crc >> 8, crc & 0xFF, ETX])

    @classmethod
    def deserialize(cls, data: bytes) -> tuple[SafePacket, bytes]:
        if not data or data[0] != STX:
            raise FrameError("safe-mode packet does not start with STX")
        if len(data) < 2:
            raise TruncatedFrame("safe-mode packet without its length byte yet")
        length = data[1]
        if not MIN_SAFE_LEN <= length <= MAX_SAFE_LEN:
            raise FrameError(
                f"safe-mode length byte {length} outside {MIN_SAFE_LEN}..{MAX_SAFE_LEN}"
            )
        total = 1 + length
        if len(data) < total:
            raise TruncatedFrame(f"safe-mode packet of {total} bytes, {len(data)} so far")
        if data[total - 1] != ETX:
            raise FrameError(f"safe-mode packet of length {length} does not end with ETX")
        payload = data[2 : total - 3]
        got = (data[total - 3] << 8) | data[total - 2]
        want = crc16_xmodem(payload)
        if got != want:
            raise FrameError(f"safe-mode CRC mismatch: got 0x{got:04X}, computed 0x{want:04X}")
        return cls(payload), data[total:]


ReplyFrame = BasicReplyFrame | SafePacket
CommandFrame = BasicCommandFrame | SafePacket


class _Stream(CappedBuffer):
    """A capped byte buffer; subclasses pop frames from its head."""

    def __init__(self, cap: int = STREAM_CAP) -> None:
        if cap < MAX_SAFE_LEN + 1 or cap < MAX_BASIC_REPLY:
            raise ValueError(f"stream cap {cap} cannot hold one whole frame")
        super().__init__(cap)

    def _skip_bogus_start(self) -> None:
        """A length byte may promise bytes that never come (noise before a real packet).

        If a later STX starts a complete packet with a valid CRC, the bytes before it were not
        a packet: report them (FrameError) and resume there instead of waiting forever.
        """
        data = bytes(self._buf)
        start = data.find(STX, 1)
        while start > 0:
            try:
                SafePacket.deserialize(data[start:])
            except FrameError:
                start = data.find(STX, start + 1)
                continue
            del self._buf[:start]
            raise FrameError(f"discarded {start} bytes of an incomplete packet: {data[:16]!r}")

    def _drop_bad_frame(self) -> None:
        """Drop a bad frame's STX and its bytes up to the next STX (one error per frame)."""
        nxt = self._buf.find(STX, 1)
        del self._buf[: nxt if nxt > 0 else len(self._buf)]

    def _skip_to_stx(self) -> bool:
        """Drop bytes before the next STX; False when the buffer is empty."""
        i = self._buf.find(STX)
        if i < 0:
            i = len(self._buf)
        garbage = bytes(self._buf[:i])
        del self._buf[:i]
        if garbage:
            raise FrameError(f"discarded {len(garbage)} bytes before STX: {garbage[:16]!r}")
        return bool(self._buf)


class ReplyStream(_Stream):
    """Reader of the pump's replies (driver side). The caller says which mode it expects."""

    def pop(self, *, safe: bool) -> ReplyFrame | None:
        """The next whole reply frame, None if more bytes are needed.

        Raises FrameError for each bad stretch of bytes, after discarding it, so that calling
        again resumes at the next STX.
        """
        self._check_overflow()
        if not self._skip_to_stx():
            return None
        kind: type[BasicReplyFrame] | type[SafePacket] = SafePacket if safe else BasicReplyFrame
        try:
            frame, rest = kind.deserialize(bytes(self._buf))
        except TruncatedFrame:
            if safe:
                self._skip_bogus_start()
            return None
        except FrameError:
            self._drop_bad_frame()
            raise
        self._buf = bytearray(rest)
        return frame


class CommandStream(_Stream):
    """Reader of commands (simulator side): safe packets start with STX, basic lines end in CR.

    A bad safe packet never eats the frame after it (a basic line has no STX to resync on):
    the bytes dropped are those of the bad packet only -- its whole length when the length byte
    leads to an ETX, else up to its first ETX or the next STX, else its stated length -- and
    what follows is parsed afresh. A packet whose length byte promises more bytes than ever
    come is given up as soon as a complete frame follows it. If the guess stops short of the
    bad packet's real end (a corrupt length byte, a CRC byte equal to ETX or STX), the line that
    follows starts with the packet's tail: that line is resumed after its last byte that is not
    printable ASCII (the packet's ETX, CRC or length byte) instead of being discarded whole --
    only right after a bad packet, so that a corrupted basic line is never cut into a command.
    """

    def __init__(self, cap: int = STREAM_CAP) -> None:
        super().__init__(cap)
        self._after_bad_packet = False

    def pop(self) -> CommandFrame | None:
        """The next whole command frame, None if more bytes are needed; FrameError as above."""
        self._check_overflow()
        while self._buf and self._buf[0] in (0x0A, 0x00):  # LF of CRLF terminals, line noise
            del self._buf[:1]
        if not self._buf:
            return None
        if self._buf[0] == STX:
            return self._pop_packet()
        stx = self._buf.find(STX, 0, MAX_COMMAND + 1)
        cr = self._buf.find(CR, 0, MAX_COMMAND + 1)
        if stx >= 0 and (cr < 0 or stx < cr):
            garbage = bytes(self._buf[:stx])
            del self._buf[:stx]
            raise FrameError(f"discarded {len(garbage)} bytes before STX: {garbage[:16]!r}")
        try:
            line, rest = BasicCommandFrame.deserialize(bytes(self._buf))
        except TruncatedFrame:
            return None
        except FrameError:
            self._discard_line()
            raise
        self._after_bad_packet = False
        self._buf = bytearray(rest)
        return line

    def _pop_packet(self) -> SafePacket | None:
        data = bytes(self._buf)
        try:
            packet, rest = SafePacket.deserialize(data)
        except TruncatedFrame:
            self._skip_bogus_start()
            self._skip_to_line_after_etx()
            return None
        except FrameError:
            del self._buf[: _bad_packet_end(data)]
            self._after_bad_packet = True
            raise
        self._after_bad_packet = False
        self._buf = bytearray(rest)
        return packet

    def _skip_to_line_after_etx(self) -> None:
        """An incomplete packet followed by ETX and a whole basic line: the packet was bogus."""
        data = bytes(self._buf)
        etx = data.find(ETX, 2)
        while etx > 0:
            rest = data[etx + 1 :]
            if rest[:1] not in (b"", b"\r", bytes([STX])):  # a non-empty line, not a packet
                try:
                    BasicCommandFrame.deserialize(rest)
                except FrameError:
                    pass
                else:
                    del self._buf[: etx + 1]
                    raise FrameError(
                        f"discarded {etx + 1} bytes of an incomplete packet: {data[:16]!r}"
                    )
            etx = data.find(ETX, etx + 1)

    def _discard_line(self) -> None:
        cr = self._buf.find(CR)
        if self._after_bad_packet:  # the tail of the bad packet: resume after its last bad byte
            self._after_bad_packet = False
            line = bytes(self._buf[: cr if 0 <= cr <= MAX_COMMAND else MAX_COMMAND + 1])
            last = max((i for i, b in enumerate(line) if not 0x20 <= b <= 0x7E), default=-1)
            if last >= 0:
                del self._buf[: last + 1]
                return
        if cr < 0:
            self._buf.clear()
        else:
            del self._buf[: cr + 1]


def _bad_packet_end(data: bytes) -> int:
    """Where a bad safe packet at the head of ``data`` most likely ends.

    In order: a later STX that starts a whole valid packet (the head was noise); the stated
    length when it leads to an ETX (a bad CRC); an ETX that closes a CRC-valid payload (only the
    length byte was corrupt); the stated length when plausible and that many bytes are there
    (a corrupt ETX); the first ETX or next STX (both length and ETX unusable); else just after
    the STX (a stray STX, e.g. a CRC byte of a packet cut short).
    """
    nxt = data.find(STX, 1)
    while nxt > 0:
        try:
            SafePacket.deserialize(data[nxt:])
        except FrameError:
            nxt = data.find(STX, nxt + 1)
            continue
        return nxt
    length = data[1] if len(data) > 1 else 0
    total = 1 + length
    stated = MIN_SAFE_LEN <= length <= MAX_SAFE_LEN and len(data) >= total
    if stated and data[total - 1] == ETX:
        return total
    etx = data.find(ETX, 1)  # a length byte equal to ETX is the end of something
    while 0 < etx <= MAX_SAFE_LEN:
        if etx >= 4 and crc16_xmodem(data[2 : etx - 2]) == int.from_bytes(data[etx - 2 : etx]):
            return etx + 1
        etx = data.find(ETX, etx + 1)
    if stated:
        return total
    nxt, etx = data.find(STX, 1), data.find(ETX, 1)
    ends = [i for i in (nxt, etx + 1 if etx > 0 else -1) if i > 0]
    return min(ends) if ends else 1


def command_of(frame: CommandFrame) -> Command:
    """The command carried by a frame (safe payloads may end in an optional CR)."""
    if isinstance(frame, BasicCommandFrame):
        return Command.parse(frame.text)
    payload = frame.payload.removesuffix(b"\r")
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(f"safe-mode command holds non-ASCII bytes: {payload!r}") from None
    if _PRINTABLE.fullmatch(text) is None:
        raise FrameError(f"safe-mode command holds control characters: {text!r}")
    return Command.parse(text)


def reply_of(frame: ReplyFrame) -> Reply:
    """The reply carried by a frame."""
    if isinstance(frame, BasicReplyFrame):
        return frame.reply
    return Reply.parse_body(frame.payload)


def encode_command(command: Command, *, safe: bool) -> bytes:
    """Bytes on the wire for ``command`` in basic or safe mode."""
    if safe:
        return SafePacket(command.text().encode("ascii")).serialize()
    return BasicCommandFrame(command.text()).serialize()


def encode_reply(reply: Reply, *, safe: bool) -> bytes:
    """Bytes on the wire for ``reply`` in basic or safe mode."""
    if safe:
        return SafePacket(reply.body()).serialize()
    return BasicReplyFrame(reply).serialize()
