"""The MLLP codec never crashes, never holds more than its cap, and resynchronises on <VT>."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import FrameError
from drivers.hl7.mllp import Discarded, DiscardReason, MllpDecoder, MllpFrame

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
payloads = st.binary(max_size=300).map(lambda b: b.replace(VT, b"").replace(FS, b""))
framing_heavy = st.lists(
    st.one_of(st.sampled_from([VT, FS, CR, b"MSH|", b"\x1c\x0d"]), st.binary(max_size=40)),
    max_size=40,
).map(b"".join)


def _frames(items: list[MllpFrame | Discarded]) -> list[bytes]:
    return [i.payload for i in items if isinstance(i, MllpFrame)]


@given(data=st.one_of(st.binary(max_size=2000), framing_heavy), cap=st.integers(1, 64))
@settings(max_examples=300)
def test_any_bytes_never_crash_and_the_buffer_stays_capped(data: bytes, cap: int) -> None:
    """Whatever arrives, in whatever chunks, feed() returns and holds at most cap + 1 bytes."""
    decoder = MllpDecoder(max_frame=cap)
    for i in range(0, len(data), 7):
        for item in decoder.feed(data[i : i + 7]):
            if isinstance(item, MllpFrame):
                assert len(item.payload) <= cap
                assert VT not in item.payload
                assert FS not in item.payload
        assert decoder.buffered <= cap + 1


@given(messages=st.lists(payloads, max_size=8), chunk=st.integers(1, 50))
@settings(max_examples=200)
def test_round_trip_in_any_chunking(messages: list[bytes], chunk: int) -> None:
    """Serialized frames come back out identical and in order, however the stream is split."""
    stream = b"".join(MllpFrame(m).serialize() for m in messages)
    decoder = MllpDecoder(max_frame=300)
    out: list[MllpFrame | Discarded] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert _frames(out) == messages
    assert not [i for i in out if isinstance(i, Discarded)]


@given(garbage=st.binary(max_size=200), message=payloads)
@settings(max_examples=200)
def test_resynchronises_on_the_next_start_block_after_garbage(
    garbage: bytes, message: bytes
) -> None:
    """Garbage (even with stray framing bytes) before a good frame never loses that frame."""
    decoder = MllpDecoder(max_frame=1000)
    decoder.feed(garbage)
    out = decoder.feed(MllpFrame(message).serialize())
    assert _frames(out)[-1:] == [message]


def test_oversize_frame_is_discarded_and_the_next_frame_still_decodes() -> None:
    """A frame over the cap is reported TOO_LONG, skipped to its end, and the next one is kept."""
    decoder = MllpDecoder(max_frame=10)
    out = decoder.feed(VT + b"A" * 25 + FS + CR + MllpFrame(b"MSH|ok").serialize())
    assert _frames(out) == [b"MSH|ok"]
    reasons = [i.reason for i in out if isinstance(i, Discarded)]
    assert reasons == [DiscardReason.TOO_LONG]
    assert decoder.buffered == 0


def test_frame_interrupted_by_a_new_start_block_is_dropped() -> None:
    """A truncated frame followed by a new <VT> is reported and the new frame decodes."""
    decoder = MllpDecoder()
    out = decoder.feed(VT + b"MSH|trunc" + MllpFrame(b"MSH|next").serialize())
    assert [i.reason for i in out if isinstance(i, Discarded)] == [DiscardReason.INTERRUPTED]
    assert _frames(out) == [b"MSH|next"]


def test_end_block_without_carriage_return_is_discarded() -> None:
    """<FS> must be followed by <CR>; otherwise the frame is dropped and decoding resumes."""
    decoder = MllpDecoder()
    out = decoder.feed(VT + b"MSH|bad" + FS + b"x" + MllpFrame(b"MSH|good").serialize())
    assert _frames(out) == [b"MSH|good"]
    assert DiscardReason.BAD_TRAILER in [i.reason for i in out if isinstance(i, Discarded)]


def test_trailer_split_across_reads_still_completes_the_frame() -> None:
    """<FS> at the end of one read and <CR> at the start of the next form one trailer."""
    decoder = MllpDecoder()
    assert decoder.feed(VT + b"MSH|x" + FS) == []
    assert _frames(decoder.feed(CR)) == [b"MSH|x"]


def test_deserialize_returns_frame_and_rest() -> None:
    """deserialize() reads one frame off the front and returns the remaining bytes."""
    frame, rest = MllpFrame.deserialize(MllpFrame(b"MSH|a").serialize() + b"tail")
    assert frame.payload == b"MSH|a"
    assert rest == b"tail"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no data"),
        (b"MSH|a" + FS + CR, "byte 0 is 0x4d"),
        (VT + b"MSH|a", "incomplete frame"),
        (VT + b"MSH|a" + FS, "without <CR>"),
        (VT + b"MSH|a" + FS + b"!", "expected <CR>"),
        (VT + b"MS" + VT + b"H" + FS + CR, "start block <VT> inside the frame at byte 3"),
        (VT + b"A" * 20, "exceeds 10 bytes"),
    ],
)
def test_deserialize_names_the_problem(data: bytes, message: str) -> None:
    """Strict decoding raises FrameError saying what is wrong and where."""
    with pytest.raises(FrameError, match=message.replace("<", ".").replace(">", ".")):
        MllpFrame.deserialize(data, max_frame=10)


def test_serialize_refuses_payload_with_framing_bytes() -> None:
    """A payload containing <VT> or <FS> cannot be framed and says at which byte."""
    with pytest.raises(FrameError, match="at byte 3"):
        MllpFrame(b"MSH\x1c").serialize()
