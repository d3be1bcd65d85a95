"""New Era codec: CRC vector, frame round trips, capped resynchronising stream readers."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import AlarmCode
from drivers.errors import FrameError
from drivers.newera.commands import COMMANDS, check_reply
from drivers.newera.errors import REJECTIONS, NotRepresentable
from drivers.newera.frames import (
    MAX_SAFE_LEN,
    STREAM_CAP,
    Alarm,
    BasicCommandFrame,
    BasicReplyFrame,
    Command,
    CommandStream,
    Reply,
    ReplyStream,
    SafePacket,
    Status,
    TruncatedFrame,
    command_of,
    crc16_xmodem,
    encode_command,
    encode_reply,
    reply_of,
)
from drivers.newera.numbers import (
    RateUnit,
    decode_rate,
    encode_rate,
    format_float,
    parse_float,
)

SAF0_PACKET = bytes.fromhex("02 08 53 41 46 30 55 43 03")

printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
replies = st.builds(
    Reply,
    address=st.integers(0, 99),
    status=st.sampled_from([s for s in Status if s is not Status.ALARM]),
    data=printable,
)
alarm_replies = st.builds(
    lambda a, al, d: Reply(a, Status.ALARM, d, al),
    st.integers(0, 99),
    st.sampled_from(list(Alarm)),
    printable,
)


def test_crc_vector_and_saf0_packet() -> None:
    """CRC-16/XMODEM of 'SAF0' is 0x5543 and the packet is 02 08 'SAF0' 55 43 03."""
    assert crc16_xmodem(b"SAF0") == 0x5543
    assert crc16_xmodem(b"123456789") == 0x31C3  # the XMODEM check value
    assert SafePacket(b"SAF0").serialize() == SAF0_PACKET
    packet, rest = SafePacket.deserialize(SAF0_PACKET + b"tail")
    assert packet.payload == b"SAF0"
    assert rest == b"tail"
    assert command_of(packet) == Command("SAF", "0")


def _crc_by_definition(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


@given(st.binary(max_size=80))
def test_crc_matches_the_bitwise_xmodem_definition(data: bytes) -> None:
    """For any payload the CRC is CRC-16/XMODEM as defined bit by bit (poly 0x1021, init 0)."""
    assert crc16_xmodem(data) == _crc_by_definition(data)


@settings(deadline=None)  # shared CI cores: no timing flakes
@given(replies | alarm_replies, st.booleans(), st.binary(max_size=8))
def test_reply_round_trip_in_both_modes(reply: Reply, safe: bool, tail: bytes) -> None:
    """Any reply encodes and decodes to itself, leaving the following bytes untouched."""
    wire = encode_reply(reply, safe=safe)
    kind = SafePacket if safe else BasicReplyFrame
    frame, rest = kind.deserialize(wire + tail)
    assert reply_of(frame) == reply
    assert rest == tail


@settings(deadline=None)  # shared CI cores: no timing flakes
@given(
    st.sampled_from(sorted(COMMANDS)),
    st.from_regex(r"[0-9A-Z.]{0,8}", fullmatch=True),
    st.none() | st.integers(0, 99),
    st.booleans(),
)
def test_command_round_trip_in_both_modes(
    name: str, params: str, address: int | None, safe: bool
) -> None:
    """Any command encodes and decodes to itself (basic line or safe packet)."""
    if not name:
        params = ""  # the status query takes no parameters (digits would read as address)
    command = Command(name, params, address)
    stream = CommandStream()
    stream.feed(encode_command(command, safe=safe))
    frame = stream.pop()
    assert frame is not None
    assert command_of(frame) == command
    assert len(stream) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_reply_stream_never_crashes_and_stays_capped(chunks: list[bytes], safe: bool) -> None:
    """Any bytes yield frames or FrameError only, and the buffer never exceeds its cap."""
    stream = ReplyStream()
    for chunk in chunks:
        stream.feed(chunk)
        assert len(stream) <= STREAM_CAP
        for _ in range(len(chunk) + 2):
            try:
                if stream.pop(safe=safe) is None:
                    break
            except FrameError:
                continue
        assert len(stream) <= STREAM_CAP


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_command_stream_never_crashes_and_stays_capped(chunks: list[bytes]) -> None:
    """The simulator's reader survives any bytes, with a capped buffer."""
    stream = CommandStream()
    for chunk in chunks:
        stream.feed(chunk)
        assert len(stream) <= STREAM_CAP
        for _ in range(len(chunk) + 2):
            try:
                frame = stream.pop()
                if frame is None:
                    break
                command_of(frame)
            except FrameError:
                continue


@settings(deadline=None)  # shared CI cores: no timing flakes
@given(st.binary(max_size=40), replies, st.booleans())
def test_stream_resynchronises_on_the_next_stx_after_garbage(
    garbage: bytes, reply: Reply, safe: bool
) -> None:
    """Garbage before a good reply is reported (FrameError) and the reply is still found."""
    stream = ReplyStream()
    stream.feed(garbage + encode_reply(reply, safe=safe))
    found: list[Reply] = []
    for _ in range(len(garbage) + 3):
        try:
            frame = stream.pop(safe=safe)
        except FrameError:
            continue
        if frame is None:
            break
        found.append(reply_of(frame))
    assert found[-1:] == [reply]


def test_truncated_then_good_reply_yields_error_then_reply() -> None:
    """A reply cut short (no ETX) before the next STX is a FrameError; the next one is read."""
    stream = ReplyStream()
    good = encode_reply(Reply(0, Status.STOPPED, "9.000MH"), safe=False)
    stream.feed(b"\x0200S9.0" + good)
    with pytest.raises(FrameError, match="truncated"):
        stream.pop(safe=False)
    frame = stream.pop(safe=False)
    assert frame is not None
    assert reply_of(frame).data == "9.000MH"


def test_bad_crc_is_rejected_and_named() -> None:
    """A safe packet whose CRC does not match its payload is a FrameError naming both CRCs."""
    bad = bytearray(SAF0_PACKET)
    bad[3] ^= 0x01
    with pytest.raises(FrameError, match="CRC mismatch"):
        SafePacket.deserialize(bytes(bad))


@pytest.mark.parametrize("length", [0, 1, 3, MAX_SAFE_LEN + 1, 255])
def test_length_byte_is_bounds_checked(length: int) -> None:
    """A length byte outside the valid range is refused before any use."""
    with pytest.raises(FrameError, match="length byte"):
        SafePacket.deserialize(bytes([0x02, length]) + b"x" * 300)


def test_length_byte_pointing_at_a_non_etx_is_refused() -> None:
    """The byte the length points at must be ETX."""
    with pytest.raises(FrameError, match="does not end with ETX"):
        SafePacket.deserialize(b"\x02\x08SAF0UCX")


def test_partial_frames_ask_for_more_bytes() -> None:
    """A frame that is merely incomplete raises TruncatedFrame, and a stream waits (None)."""
    with pytest.raises(TruncatedFrame):
        SafePacket.deserialize(SAF0_PACKET[:5])
    with pytest.raises(TruncatedFrame):
        BasicReplyFrame.deserialize(b"\x0200S9.0")
    stream = ReplyStream()
    stream.feed(SAF0_PACKET[:5])
    assert stream.pop(safe=True) is None


def test_overlong_basic_reply_is_refused_and_buffer_stays_capped() -> None:
    """A reply that never ends is an overlong FrameError; flooding drops the oldest bytes."""
    with pytest.raises(FrameError, match="longer than"):
        BasicReplyFrame.deserialize(b"\x0200S" + b"9" * 100)
    stream = ReplyStream()
    stream.feed(b"\x0200S" + b"9" * 1000)
    assert len(stream) == STREAM_CAP
    with pytest.raises(FrameError, match="dropped"):
        stream.pop(safe=False)


def test_command_text_is_normalised_like_the_pump() -> None:
    """Spaces are stripped and text upper-cased; the address is 1-2 leading digits."""
    assert Command.parse("01 rat 9.0 mh") == Command("RAT", "9.0MH", 1)
    assert Command.parse("ver") == Command("VER", "", None)
    assert Command.parse("") == Command("", "", None)
    assert Command.parse("7 dir inf") == Command("DIR", "INF", 7)
    assert BasicCommandFrame.deserialize(b"01RAT\r\n") == (BasicCommandFrame("01RAT"), b"\n")


def test_alarm_replies_map_to_alarm_codes() -> None:
    """A?R, A?S, A?T, A?E, A?O decode to the normalised alarm codes."""
    expected = {
        "R": AlarmCode.DEVICE_RESET,
        "S": AlarmCode.STALLED,
        "T": AlarmCode.COMM_TIMEOUT,
        "E": AlarmCode.PROGRAM_ERROR,
        "O": AlarmCode.PHASE_OUT_OF_RANGE,
    }
    for letter, code in expected.items():
        frame, _ = BasicReplyFrame.deserialize(f"\x0203A?{letter}\x03".encode())
        assert frame.reply.alarm is not None
        assert frame.reply.alarm.code is code
    with pytest.raises(FrameError, match="alarm code"):
        BasicReplyFrame.deserialize(b"\x0203A?Z\x03")


def test_error_codes_have_a_rejection_class_with_meaning() -> None:
    """Each error code maps to a DeviceRejected whose message names pump, command, meaning."""
    assert set(REJECTIONS) == {"?", "?NA", "?OOR", "?COM", "?IGN"}
    exc = REJECTIONS["?OOR"](4, "04RAT9999MH")
    assert "pump 04" in str(exc)
    assert "out of range" in str(exc)
    assert Reply(4, Status.STOPPED, "?NA").error == "?NA"


def test_reply_shape_is_checked_against_the_command_table() -> None:
    """A reply whose data does not fit the command (e.g. a stale answer) is a FrameError."""
    check_reply(Command("RAT", "", 0), Reply(0, Status.STOPPED, "9.000MH"))
    check_reply(Command("RAT", "9MH", 0), Reply(0, Status.STOPPED, ""))
    with pytest.raises(FrameError, match="does not fit"):
        check_reply(Command("RAT", "", 0), Reply(0, Status.STOPPED, "I0.1W0.0ML"))


@pytest.mark.parametrize(
    ("text", "value"), [("9.000", "9"), ("1500", "1500"), (".5", "0.5"), ("12.", "12")]
)
def test_parse_float_accepts_pump_floats(text: str, value: str) -> None:
    """1-4 digits and at most one point."""
    assert parse_float(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", ".", "12345", "1.2.3", "-1", "1e3", "9.0000"])
def test_parse_float_refuses_other_text(text: str) -> None:
    """Anything else is refused with the text named."""
    with pytest.raises(ValueError, match="New Era float"):
        parse_float(text)


@settings(deadline=None)  # shared CI cores: no timing flakes
@given(st.decimals(min_value=0, max_value=9999, places=4, allow_nan=False))
def test_format_float_keeps_four_digits_and_round_trips(value: Decimal) -> None:
    """Formatting gives at most 4 digits, and parsing it back is within half a last digit."""
    text = format_float(value)
    assert sum(c.isdigit() for c in text) <= 4
    assert text.count(".") <= 1
    back = parse_float(text)
    last = Decimal(1).scaleb(-(len(text.split(".")[1]) if "." in text else 0))
    assert abs(back - value) <= last / 2


@settings(deadline=None)  # shared CI cores: no timing flakes
@given(st.decimals(min_value=Decimal("0.001"), max_value=5000, places=3, allow_nan=False))
def test_encode_rate_picks_the_unit_with_least_rounding(rate: Decimal) -> None:
    """The chosen unit is never worse than plain mL/h, and below 100 mL/h keeps 0.01 mL/h."""
    text, unit = encode_rate(rate)
    error = abs(decode_rate(text, unit) - rate)
    mh_error = abs(Decimal(format_float(rate)) - rate)
    assert error <= mh_error
    if rate < 100:
        assert error <= Decimal("0.005")


def test_encode_rate_examples_and_limits() -> None:
    """Demo rates are exact in mL/h; tiny rates move to uL/h; absurd rates are refused."""
    assert encode_rate(Decimal("9.0")) == ("9.000", RateUnit.ML_H)
    assert encode_rate(Decimal("52.5")) == ("52.50", RateUnit.ML_H)
    assert encode_rate(Decimal("0.0007")) == ("0.700", RateUnit.UL_H)
    with pytest.raises(NotRepresentable, match="cannot be written"):
        encode_rate(Decimal(10**7))


def _decoded_commands(stream: CommandStream, limit: int) -> list[Command]:
    """Pop until the stream wants more bytes, skipping the FrameErrors it reports."""
    found: list[Command] = []
    for _ in range(limit):
        try:
            frame = stream.pop()
            if frame is None:
                break
            found.append(command_of(frame))
        except FrameError:
            continue
    return found


command_texts = st.builds(
    lambda addr, name, params: Command(name, params, addr).text(),
    st.none() | st.integers(0, 99),
    st.sampled_from(sorted(n for n in COMMANDS if n)),
    st.sampled_from(["", "9.0MH", "INF", "12"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=0, max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\x02", b"")),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=1, max_value=255),
    command_texts,
    st.booleans(),
)
def test_a_garbled_packet_never_eats_the_command_after_it(
    payload: bytes, where: int, flip: int, text: str, next_safe: bool
) -> None:
    """A safe packet with any one byte after its STX corrupted (payload, CRC, length or ETX),
    followed at once by a valid basic line or safe packet: the valid command is decoded."""
    packet = bytearray(SafePacket(payload).serialize())
    i = 1 + where % (len(packet) - 1)
    packet[i] ^= flip
    if packet[i] == 0x02:  # a new STX is a new frame start, not a corruption of this one
        packet[i] ^= 0x80
    good = encode_command(Command.parse(text), safe=next_safe)
    stream = CommandStream()
    stream.feed(bytes(packet) + good)
    found = _decoded_commands(stream, len(packet) + 4)
    assert found[-1:] == [Command.parse(text)]
    assert len(stream) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=100),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789. ", max_size=20),
)
def test_garbage_then_a_safe_packet_decodes_the_packet(garbage: bytes, text: str) -> None:
    """Any bytes (cut-short packets, bogus length bytes, noise) before a valid safe packet:
    the packet is decoded, and the buffer holds nothing after it."""
    stream = CommandStream()
    good = SafePacket(text.encode()).serialize()
    stream.feed(garbage + good)
    found = _decoded_commands(stream, len(garbage) + 4)
    assert found[-1:] == [Command.parse(text)]
    assert len(stream) == 0


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("bad CRC", lambda p: p[:-3] + bytes([p[-3] ^ 0x10]) + p[-2:]),
        ("garbled payload", lambda p: p[:3] + b"X" + p[4:]),
        ("bad length byte", lambda p: p[:1] + b"\x01" + p[2:]),
        ("length too long", lambda p: p[:1] + bytes([p[1] + 20]) + p[2:]),
        ("lost ETX", lambda p: p[:-1] + b"Z"),
    ],
)
def test_basic_rat_right_after_a_corrupted_packet_is_decoded(
    name: str, corrupt: Callable[[bytes], bytes]
) -> None:
    """The reported case: a corrupted SAF0 packet then `RAT\\r` in one read -> RAT is decoded
    (after one FrameError for the bad packet)."""
    stream = CommandStream()
    stream.feed(corrupt(SAF0_PACKET) + b"RAT\r")
    errors = 0
    frames = []
    for _ in range(6):
        try:
            frame = stream.pop()
        except FrameError:
            errors += 1
            continue
        if frame is None:
            break
        frames.append(command_of(frame))
    assert frames == [Command("RAT")], name
    assert errors >= 1


@settings(max_examples=300, deadline=None)
@given(
    replies, st.integers(min_value=0, max_value=200), st.integers(1, 255), replies, st.booleans()
)
def test_a_garbled_reply_never_eats_the_reply_after_it(
    bad: Reply, where: int, flip: int, reply: Reply, safe: bool
) -> None:
    """Driver side: a reply with one byte after its STX corrupted, then a good reply in the
    same read: the good reply is decoded."""
    wire = bytearray(encode_reply(bad, safe=safe))
    i = 1 + where % (len(wire) - 1)
    wire[i] ^= flip
    stream = ReplyStream()
    stream.feed(bytes(wire) + encode_reply(reply, safe=safe))
    found: list[Reply] = []
    for _ in range(len(wire) + 4):
        try:
            frame = stream.pop(safe=safe)
        except FrameError:
            continue
        if frame is None:
            break
        found.append(reply_of(frame))
    assert found[-1:] == [reply]
