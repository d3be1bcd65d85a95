"""A one-shot MLLP peer for tests: one framed message on a fresh connection, its ACK back."""

from __future__ import annotations

import asyncio

from drivers.hl7 import Ack, MllpDecoder, MllpFrame, parse_ack


async def send_one(host: str, port: int, payload: bytes, *, timeout_s: float) -> Ack:
    """Send ``payload`` framed on a new connection to ``host:port`` and return its ACK."""
    reader, writer = await asyncio.open_connection(host, port)
    decoder = MllpDecoder()
    writer.write(MllpFrame(payload).serialize())
    await writer.drain()
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), timeout_s)
            assert chunk, "connection closed before the ACK"
            frames = [f for f in decoder.feed(chunk) if isinstance(f, MllpFrame)]
            if frames:
                return parse_ack(frames[0].payload)
    finally:
        writer.close()
        await writer.wait_closed()
