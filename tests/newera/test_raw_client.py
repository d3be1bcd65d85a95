"""A third-party terminal (plain bytes, no driver) gets device-like answers from the simulator."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from decimal import Decimal

import pytest

from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator
from tests.support.procs import wait_for_line

SAF0_PACKET = bytes.fromhex("02 08 53 41 46 30 55 43 03")


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
) -> bytes:
    writer.write(line)
    await writer.drain()
    async with asyncio.timeout(2):
        return await reader.readuntil(b"\x03")


async def exchange_safe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    """Send bytes, read one safe packet by its length byte (CRC bytes may equal ETX)."""
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(2):
        head = await reader.readexactly(2)
        return head + await reader.readexactly(head[1] - 1)


def safe_packet(payload: bytes) -> bytes:
    """Built by hand from the spec, independently of the codec under test."""
    crc = 0
    for byte in payload:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return bytes([2, len(payload) + 4]) + payload + crc.to_bytes(2, "big") + b"\x03"


@pytest.mark.asyncio
async def test_terminal_session_gets_device_like_replies() -> None:
    """First command -> A?R; then lower case with spaces, CRLF, errors and VER as the pump."""
    sim = NewEraSimulator([NewEraPumpSetup(rate_ml_h=Decimal(9))])
    async with sim.serving("tcp://127.0.0.1:0"):
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            assert await exchange(reader, writer, b"\r\n") == b"\x0200A?R\x03"
            assert await exchange(reader, writer, b"ver\r\n") == b"\x0200SNE1000V3.928\x03"
            assert await exchange(reader, writer, b"00 rat\r\n") == b"\x0200S9.000MH\x03"
            assert await exchange(reader, writer, b"0 rat 12 mh\r\n") == b"\x0200S\x03"
            assert await exchange(reader, writer, b"run\r\n") == b"\x0200I\x03"
            assert await exchange(reader, writer, b"hello\r\n") == b"\x0200I?\x03"
            assert await exchange(reader, writer, b"rat 99 mm\r\n") == b"\x0200I?OOR\x03"
            assert await exchange(reader, writer, b"dia 10\r") == b"\x0200I?NA\x03"
            assert await exchange(reader, writer, b"stp\r") == b"\x0200P\x03"
            assert await exchange(reader, writer, b"dir\r") == b"\x0200PINF\x03"
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.asyncio
async def test_terminal_safe_mode_packets_and_the_saf0_rescue_packet() -> None:
    """After SAF5 the pump wants CRC packets; the SAF0 packet returns it to basic mode."""
    sim = NewEraSimulator([NewEraPumpSetup(reset_alarm=False)])
    async with sim.serving("tcp://127.0.0.1:0"):
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            assert await exchange(reader, writer, b"SAF5\r") == b"\x0200S\x03"
            assert safe_packet(b"SAF0") == SAF0_PACKET
            com = await exchange_safe(reader, writer, b"VER\r")  # basic command in safe mode
            assert com == safe_packet(b"00S?COM")
            ver = await exchange_safe(reader, writer, safe_packet(b"VER"))
            assert ver == safe_packet(b"00SNE1000V3.928")
            assert await exchange_safe(reader, writer, SAF0_PACKET) == safe_packet(b"00S")
            assert sim.pumps[0].safe_timeout_s == 0
            assert await exchange(reader, writer, b"SAF\r") == b"\x0200S0\x03"
        finally:
            writer.close()
            await writer.wait_closed()


def test_cli_serves_a_terminal_until_terminated() -> None:
    """`infusiond sim newera --listen ...` logs its URL, answers bytes, and exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sim",
            "newera",
            "--listen",
            "tcp://127.0.0.1:0",  # the simulator binds any free port and logs it
            "--rate",
            "9.0",
            "--running",
            "--no-reset-alarm",
            "--pumps",
            "2",
            "--faults",
            "stall@1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        seen = wait_for_line(proc, b"serving", timeout=10, stream=proc.stdout)
        if b"\n" not in seen[seen.index(b"serving") :]:  # the URL is on the same line
            seen += wait_for_line(proc, b"\n", timeout=10, stream=proc.stdout)
        found = re.search(rb"socket://127\.0\.0\.1:(\d+)", seen)
        assert found is not None, f"no URL in the simulator's log line: {seen!r}"
        port = int(found.group(1))

        async def talk() -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return (
                    await exchange(reader, writer, b"00RAT\r"),
                    await exchange(reader, writer, b"01\r"),
                )
            finally:
                writer.close()
                await writer.wait_closed()

        rate, stalled = asyncio.run(talk())
        assert rate == b"\x0200I9.000MH\x03"
        assert stalled == b"\x0201A?S\x03"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("in_safe_mode", [False, True])
async def test_basic_command_right_after_a_corrupted_packet_is_answered(
    in_safe_mode: bool,
) -> None:
    """A SAF0 packet with a bad CRC and `RAT\\r` in one write: the bad packet is refused (?COM
    when the pump is in safe mode) and the basic RAT that follows is still answered."""
    sim = NewEraSimulator([NewEraPumpSetup(rate_ml_h=Decimal(9), reset_alarm=False)])
    if in_safe_mode:
        sim.pumps[0].safe_timeout_s = 60
    corrupted = bytearray(SAF0_PACKET)
    corrupted[-2] ^= 0x01  # CRC low byte
    async with sim.serving("tcp://127.0.0.1:0"):
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            writer.write(bytes(corrupted) + b"RAT\r")
            await writer.drain()
            async with asyncio.timeout(2):
                if in_safe_mode:
                    head = await reader.readexactly(2)
                    com = head + await reader.readexactly(head[1] - 1)
                    assert com == safe_packet(b"00S?COM")
                    # a basic command to a pump in safe mode is answered ?COM, in a packet
                    head = await reader.readexactly(2)
                    rat = head + await reader.readexactly(head[1] - 1)
                    assert rat == safe_packet(b"00S?COM")
                else:
                    assert await reader.readuntil(b"\x03") == b"\x0200S9.000MH\x03"
        finally:
            writer.close()
            await writer.wait_closed()
    assert sim.frame_errors == 1
    assert sim.pumps[0].safe_timeout_s == (60 if in_safe_mode else 0)
