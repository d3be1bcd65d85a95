"""The MLLP listener and client over real TCP on 127.0.0.1: every message gets AA or AE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import pytest_asyncio

from drivers.backoff import Backoff
from drivers.hl7 import (
    Ack,
    AckCode,
    MllpDecoder,
    MllpFrame,
    Parameter,
    ReceiverConfig,
    VitalsClient,
    VitalsListener,
    VitalsSample,
    build_oru,
    parse_ack,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _oru(control_id: str, map_value: int | str = 74) -> bytes:
    payload = build_oru(
        control_id=control_id,
        sent_at=NOW,
        values={Parameter.MAP: (Decimal(74), NOW), Parameter.HR: (Decimal(90), NOW)},
        bed="bed-1",
    )
    return payload.replace(b"|1.1.1.1|74|", f"|1.1.1.1|{map_value}|".encode())


class Peer:
    """A raw MLLP peer: writes bytes, reads ACK frames with our decoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = MllpDecoder()
        self.pending: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ack(self) -> Ack:
        while not self.pending:
            chunk = await asyncio.wait_for(self.reader.read(4096), 5)
            assert chunk, "connection closed before an ACK"
            self.pending += [
                f.payload for f in self.decoder.feed(chunk) if isinstance(f, MllpFrame)
            ]
        return parse_ack(self.pending.pop(0))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest_asyncio.fixture
async def listener() -> AsyncIterator[tuple[VitalsListener, asyncio.Queue[VitalsSample]]]:
    samples: asyncio.Queue[VitalsSample] = asyncio.Queue()
    config = ReceiverConfig(on_sample=samples.put_nowait, now=lambda: NOW, max_frame=4096)
    async with VitalsListener(config, host="127.0.0.1", port=0, max_connections=4) as server:
        yield server, samples


async def _connect(server: VitalsListener) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return Peer(reader, writer)


@pytest.mark.asyncio
async def test_valid_oru_is_acked_aa_and_delivered(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """A good ORU^R01 yields AA naming its control id, and the sample reaches the callback."""
    server, samples = listener
    peer = await _connect(server)
    await peer.send(MllpFrame(_oru("c-1")).serialize())
    ack = await peer.ack()
    assert (ack.code, ack.control_id) == (AckCode.AA, "c-1")
    sample = samples.get_nowait()
    assert sample.observations[Parameter.MAP].value == 74
    assert sample.bed == "bed-1"
    await peer.close()


@pytest.mark.asyncio
async def test_bad_value_is_acked_ae_naming_the_field_and_not_delivered(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """A non-numeric MAP gets AE with the OBX field in MSA-3 and ERR-2; nothing is applied."""
    server, samples = listener
    peer = await _connect(server)
    await peer.send(MllpFrame(_oru("c-2", "7?4")).serialize())
    ack = await peer.ack()
    assert (ack.code, ack.control_id) == (AckCode.AE, "c-2")
    assert "OBX[1]-5 value '7?4' of MAP is not numeric" in ack.text
    assert ack.location == "OBX^1^5"
    assert samples.empty()
    # the same connection keeps working
    await peer.send(MllpFrame(_oru("c-3")).serialize())
    assert (await peer.ack()).code is AckCode.AA
    await peer.close()


@pytest.mark.asyncio
async def test_garbage_and_not_hl7_are_survived(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """Bytes outside frames are dropped; a framed non-HL7 payload gets AE; then AA again."""
    server, _ = listener
    peer = await _connect(server)
    await peer.send(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + MllpFrame(b"hello").serialize())
    ack = await peer.ack()
    assert ack.code is AckCode.AE
    assert "must start with an MSH segment" in ack.text
    await peer.send(MllpFrame(_oru("c-4")).serialize())
    assert (await peer.ack()).control_id == "c-4"
    assert server.stats.discarded_bytes > 0
    assert (server.stats.accepted, server.stats.errors) == (1, 1)
    await peer.close()


@pytest.mark.asyncio
async def test_oversize_message_gets_ae_and_the_buffer_is_not_grown(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """A message over the 4 KiB cap is answered AE (size named) and the next one is AA."""
    server, _ = listener
    peer = await _connect(server)
    big = _oru("big") + b"NTE|1||" + b"x" * 10_000 + b"\r"
    await peer.send(MllpFrame(big).serialize() + MllpFrame(_oru("c-5")).serialize())
    first = await peer.ack()
    assert first.code is AckCode.AE
    assert "exceeds 4096 bytes" in first.text
    assert (await peer.ack()).control_id == "c-5"
    await peer.close()


@pytest.mark.asyncio
async def test_abrupt_disconnect_mid_frame_does_not_affect_other_connections(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """A peer that drops half-way through a frame leaves the listener serving others."""
    server, _ = listener
    rude = await _connect(server)
    await rude.send(b"\x0bMSH|^~\\&|half")
    rude.writer.transport.abort()
    peer = await _connect(server)
    await peer.send(MllpFrame(_oru("c-6")).serialize())
    assert (await peer.ack()).code is AckCode.AA
    await peer.close()


@pytest.mark.asyncio
async def test_a_connection_over_the_limit_evicts_the_peer_idle_longest(
    listener: tuple[VitalsListener, asyncio.Queue[VitalsSample]],
) -> None:
    """With all 4 slots held, a fifth connection is served and the peer whose last frame is
    oldest is closed; the other three keep working."""
    server, _ = listener
    peers = [await _connect(server) for _ in range(4)]
    for i, peer in enumerate(peers):
        await peer.send(MllpFrame(_oru(f"p{i}")).serialize())
        assert (await peer.ack()).code is AckCode.AA
    extra = await _connect(server)
    await extra.send(MllpFrame(_oru("x-1")).serialize())
    assert (await extra.ack()).code is AckCode.AA
    assert await asyncio.wait_for(peers[0].reader.read(100), 5) == b""
    for i, peer in enumerate(peers[1:], start=1):
        await peer.send(MllpFrame(_oru(f"again-{i}")).serialize())
        assert (await peer.ack()).control_id == f"again-{i}"
    assert (server.connections, server.stats.evicted) == (4, 1)
    for peer in (*peers, extra):
        await peer.close()


@pytest.mark.asyncio
async def test_peer_trickling_bytes_without_a_frame_is_closed_after_the_idle_timeout() -> None:
    """Stray bytes do not count as activity: a peer that keeps sending one byte at a time but
    never completes a frame is closed once idle_timeout_s passes without a frame."""
    config = ReceiverConfig(on_sample=lambda s: None, idle_timeout_s=0.3)
    async with VitalsListener(config, port=0) as server:
        peer = await _connect(server)
        await peer.send(b"\x0bMSH|")  # the start of a frame that never ends

        async def trickle() -> None:
            while not peer.writer.is_closing():
                peer.writer.write(b"x")
                await asyncio.sleep(0.05)  # the trickle's pace, not a synchronisation

        async with asyncio.TaskGroup() as tg:
            dripping = tg.create_task(trickle(), name="trickle")
            assert await asyncio.wait_for(peer.reader.read(100), 5) == b""
            dripping.cancel()
        await peer.close()
        assert server.connections == 0


@pytest.mark.asyncio
async def test_silent_peer_is_disconnected_after_the_idle_timeout() -> None:
    """A connection that sends nothing for idle_timeout_s is closed, freeing its slot."""
    config = ReceiverConfig(on_sample=lambda s: None, idle_timeout_s=0.1)
    async with VitalsListener(config, port=0) as server:
        peer = await _connect(server)
        assert await asyncio.wait_for(peer.reader.read(100), 5) == b""
        await peer.close()


@pytest.mark.asyncio
async def test_client_mode_connects_to_a_gateway_and_acks_what_it_pushes() -> None:
    """In client mode the daemon dials the monitor gateway, receives ORU and answers AA."""
    acks: asyncio.Queue[Ack] = asyncio.Queue()

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        await peer.send(MllpFrame(_oru("g-1")).serialize())
        await acks.put(await peer.ack())
        await peer.close()

    server = await asyncio.start_server(gateway, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    samples: asyncio.Queue[VitalsSample] = asyncio.Queue()
    client = VitalsClient(
        ReceiverConfig(on_sample=samples.put_nowait, now=lambda: NOW),
        host="127.0.0.1",
        port=port,
        backoff=Backoff(initial_s=0.01, maximum_s=0.05),
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run(), name="hl7-client")
        ack = await asyncio.wait_for(acks.get(), 5)
        sample = await asyncio.wait_for(samples.get(), 5)
        task.cancel()
    assert (ack.code, ack.control_id) == (AckCode.AA, "g-1")
    assert sample.observations[Parameter.HR].value == 90
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_client_retries_with_backoff_until_the_gateway_appears() -> None:
    """With nothing listening the client backs off and connects once the gateway is up."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = VitalsClient(
        ReceiverConfig(on_sample=lambda s: None),
        host="127.0.0.1",
        port=port,
        backoff=Backoff(initial_s=0.01, maximum_s=0.05),
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run(), name="hl7-client")
        while client.backoff.attempts < 2:  # no event exists for a refused connect
            await asyncio.sleep(0.01)
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        server = await asyncio.start_server(lambda r, w: accepted.put_nowait(w), "127.0.0.1", port)
        await asyncio.wait_for(client.connected.wait(), 5)
        writer = await asyncio.wait_for(accepted.get(), 5)
        task.cancel()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
