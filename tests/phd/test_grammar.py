"""Conformance of the simulator (and the shared reader) to the documented PHD ULTRA grammar.

Each expectation is written from the sources cited in ``drivers/phd/grammar.toml`` ([sources]):
U83/U88 are the PHD ULTRA manual (5419-002) pages, D50 the Pump 33 DDS manual (5419-013), K22
the KD Scientific pump-chain error list. The bytes are typed as a terminal would, without the
driver, and read back raw.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio

from drivers.errors import FrameError
from drivers.phd.grammar import COMMANDS, ERRORS, SOURCES, Command, Prompt, ReplyReader
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator

#: a reply, per U83/D50: lines 'LF [addr:] text CR', then 'LF [addr] prompt'
REPLY = re.compile(rb"((?:\n[ -~]*\r)*)\n(\d{0,2})(T\*|:|>|<|\*)$")


class Terminal:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, line: bytes) -> tuple[list[str], str, str]:
        """Send ``line``; (data lines, prompt address, prompt) of the reply."""
        self.writer.write(line)
        await self.writer.drain()
        buf = b""
        async with asyncio.timeout(2):
            while (m := REPLY.search(buf)) is None or m.start() != 0:
                buf += await self.reader.read(256)
        lines = [x.decode() for x in re.findall(rb"\n([ -~]*)\r", m.group(1))]
        return lines, m.group(2).decode(), m.group(3).decode()


@pytest_asyncio.fixture
async def term() -> AsyncIterator[Terminal]:
    sim = PhdSimulator(
        [
            PhdPumpSetup(0, rate_ml_h=Decimal(9), running=True),
            PhdPumpSetup(12, rate_ml_h=Decimal(2)),
        ]
    )
    async with sim.serving("tcp://127.0.0.1:0"):
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            yield Terminal(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()


def test_every_table_row_cites_a_known_source() -> None:
    """Every command, prompt and error row names its source among [sources] (or 'assumed')."""
    for spec in COMMANDS.values():
        keys = set(re.findall(r"\b[A-Za-z0-9]+\b", spec.source))
        assert keys & set(SOURCES), f"{spec.name}: source {spec.source!r}"
    assert set(SOURCES) >= {"U83", "U88", "D50", "K22", "PUB", "assumed"}
    assert {"?", "NA", "OOR"} <= set(ERRORS)  # K22


@pytest.mark.asyncio
async def test_address_prefix_abbreviation_and_the_manuals_example(term: Terminal) -> None:
    """U83: '12:irat 3.2 ul/min' sets pump 12; the prompt carries address 12 and idle ':'."""
    assert await term.ask(b"12:irat 3.2 ul/min\r") == ([], "12", ":")
    assert await term.ask(b"12:irate\r") == (["3.2 ul/min"], "12", ":")
    assert await term.ask(b"12:addr\r") == (["12"], "12", ":")


@pytest.mark.asyncio
async def test_prompts_carry_the_state(term: Terminal) -> None:
    """U83 prompts: '>' infusing (pump 0 runs, no address prefix), ':' idle after stop."""
    assert (await term.ask(b"ver\r"))[2] == ">"
    assert await term.ask(b"stop\r") == ([], "", ":")
    assert await term.ask(b"irun\r") == ([], "", ">")


@pytest.mark.asyncio
async def test_status_line_has_three_integers_and_five_flags(term: Terminal) -> None:
    """U88: rate fL/s, time s, volume fL, flags i/w, limit '.', stall '.', trigger, port."""
    lines, _, prompt = await term.ask(b"status\r")
    rate, _time, _volume, flags = lines[0].split(" ")
    assert int(rate) == 9 * 10**12 // 3600  # 9 mL/h in femtolitres per second
    assert re.fullmatch(r"[iw][IW.][S.][T.][IW]", flags)
    assert flags[0] == "i"
    assert flags[2] == "."
    assert prompt == ">"


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(n for n, s in COMMANDS.items() if s.query is not None))
async def test_every_query_the_driver_uses_is_answered_in_its_documented_shape(
    term: Terminal, name: str
) -> None:
    """Full name and four-letter abbreviation (U83) get one data line of the row's shape."""
    shape = COMMANDS[name].query
    assert shape is not None
    for word in {name, name[:4]} if len(name) > 4 else {name}:
        lines, _, _ = await term.ask(word.encode() + b"\r")
        assert len(lines) == 1, (word, lines)
        assert shape.fullmatch(lines[0]), (word, lines)


@pytest.mark.asyncio
async def test_errors_are_a_line_then_the_prompt(term: Terminal) -> None:
    """K22: '<lf><message><cr>' then a prompt; nothing is executed."""
    assert await term.ask(b"12:bogus\r") == (["Command error"], "12", ":")
    assert await term.ask(b"12:irate fast\r") == (["Argument error"], "12", ":")
    assert await term.ask(b"12:irate 99999 ml/min\r") == (["Out of range"], "12", ":")
    assert await term.ask(b"diameter 10\r") == (["Command not allowed"], "", ">")
    assert await term.ask(b"12:irate\r") == (["2 ml/hr"], "12", ":")


@pytest.mark.asyncio
async def test_crlf_lf_and_cr_end_a_command_and_garbage_does_not_eat_the_next(
    term: Terminal,
) -> None:
    """A line of non-ASCII garbage is dropped; the command right after it is answered."""
    assert (await term.ask(b"12:ver\r\n"))[0] == ["PHD ULTRA 3.0.4"]
    assert (await term.ask(b"12:ver\n"))[0] == ["PHD ULTRA 3.0.4"]
    assert (await term.ask(b"\xff\xfe\x80\r12:addr\r"))[0] == ["12"]


def test_reader_accepts_cr_lf_variants_and_an_address_prefix_on_data_lines() -> None:
    """Lenient in what it accepts: CR LF, LF CR or LF; an 'addr:' prefix on data lines."""
    for wire in (b"\r\n12:5 ml/hr\r\n12:", b"\n5 ml/hr\r\n12:", b"\n12: 5 ml/hr\n12:"):
        reader = ReplyReader()
        reader.stream.feed(wire)
        reply = reader.pop(12)
        assert reply is not None
        assert reply.lines == ("5 ml/hr",)
        assert reply.prompt is Prompt.IDLE


def test_reader_waits_for_a_whole_prompt_and_rejects_another_pumps() -> None:
    """'1' is not yet a prompt of pump 12; '12>' is, and so is a bare '>' (lenient: no address
    on the reply); pump 3's prompt is a FrameError."""
    reader = ReplyReader()
    reader.stream.feed(b"\n1")
    assert reader.pop(12) is None
    reader.stream.feed(b"2>")
    reply = reader.pop(12)
    assert reply is not None
    assert reply.prompt is Prompt.INFUSING
    reader.stream.feed(b"\n>")
    bare = reader.pop(12)
    assert bare is not None
    assert (bare.address, bare.prompt) == (12, Prompt.INFUSING)
    reader.stream.feed(b"\n3:")
    with pytest.raises(FrameError, match="prompt of pump 03, expected 12"):
        reader.pop(12)


def test_reader_caps_lines_and_resynchronises_after_garbage() -> None:
    """An endless line is one FrameError; a garbled line drops the reply it belonged to; the
    reply after it is read whole."""
    reader = ReplyReader()
    reader.stream.feed(b"\n" + b"9" * 200)
    with pytest.raises(FrameError, match="longer than 96 bytes"):
        reader.pop(0)
    reader.stream.feed(b"\n9.\xb00 ml/hr\r\n:\n9 ml/hr\r\n:")
    with pytest.raises(FrameError, match="garbled line"):
        reader.pop(0)
    reply = reader.pop(0)
    assert reply is not None
    assert reply.lines == ("9 ml/hr",)


def test_commands_are_sent_strictly() -> None:
    """Full names, one space before arguments, address with colon only when non-zero, CR."""
    assert Command("irate", "3.2 ul/min", 12).encode() == b"12:irate 3.2 ul/min\r"
    assert Command("status").encode() == b"status\r"
    with pytest.raises(ValueError, match=r"0\.\.99"):
        Command("ver", "", 100)
    with pytest.raises(ValueError, match="printable"):
        Command("irate", "1\r2 ml/hr")
