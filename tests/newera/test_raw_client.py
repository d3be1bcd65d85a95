"""A third-party terminal (plain bytes, no driver) gets device-like answers from the simulator."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
from decimal import Decimal

import pytest

from sim_devices.newera_server import NewEraSimulator, PumpSetup
from tests.support.procs import free_port

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
    sim = NewEraSimulator([PumpSetup(rate_ml_h=Decimal(9))])
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
    sim = NewEraSimulator([PumpSetup(reset_alarm=False)])
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
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sim",
            "newera",
            "--listen",
            f"tcp://127.0.0.1:{port}",
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
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"serving" not in seen:
                assert sel.select(10), f"simulator did not start: {seen!r}"
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"simulator exited: {seen!r}"
                seen += chunk

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
