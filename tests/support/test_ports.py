"""The port helpers survive the race that made CI flaky: a port handed out as free is bound by
someone else before the server under test binds it. Each test takes the port first, for real."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.support.procs import Mosquitto, free_port, retry_address_in_use


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.mark.asyncio
async def test_mosquitto_moves_to_a_new_port_when_its_port_was_taken(
    tmp_path: Path, taken_port: int
) -> None:
    """mosquitto cannot bind port 0 and say which port it got: when the free port it was given
    is taken meanwhile it fails with "Address already in use", and start() retries on a new
    port; the broker then serves there, and a restart comes back on that same port."""
    broker = Mosquitto(tmp_path / "mosquitto", port=taken_port)
    broker.start()
    try:
        assert broker.port != taken_port
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="probe") as client:
            await client.publish("probe/x", b"1", qos=1)
        moved_to = broker.port
        broker.restart()
        assert broker.port == moved_to
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="probe2") as client:
            await client.publish("probe/x", b"2", qos=1)
    finally:
        broker.stop()


def test_mosquitto_websocket_listener_moves_too(tmp_path: Path, taken_port: int) -> None:
    """A taken WebSocket port is retried the same way; the broker's ws_port is where it is."""
    broker = Mosquitto(tmp_path / "mosquitto", websockets=True, ws_port=taken_port)
    broker.start()
    try:
        assert broker.ws_port != taken_port
        with socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5):
            pass
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_in_process_server_is_retried_on_a_new_port_when_its_port_was_taken(
    taken_port: int,
) -> None:
    """retry_address_in_use enters the server again on the next port when the first one is
    taken (EADDRINUSE) and yields the port it really got."""
    offered = iter([taken_port, free_port()])
    async with retry_address_in_use(serve_on, ports=lambda: next(offered)) as (server, port):
        assert port != taken_port
        assert server.sockets[0].getsockname()[1] == port
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    assert not server.is_serving()


@pytest.mark.asyncio
async def test_other_failures_and_the_last_attempt_are_not_retried(taken_port: int) -> None:
    """Only "address in use" is retried, and only PORT_ATTEMPTS times: the error then reaches
    the test, naming the port."""
    with pytest.raises(OSError, match="address already in use"):
        async with retry_address_in_use(serve_on, attempts=2, ports=lambda: taken_port):
            pass
    with pytest.raises(OSError, match="not an address"):
        async with retry_address_in_use(lambda _port: _Refusing(), ports=lambda: taken_port):
            pass


class _Server:
    """``async with _Server(port)``: an asyncio TCP server on 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> asyncio.Server:
        self.server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", self.port)
        return self.server

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def serve_on(port: int) -> _Server:
    return _Server(port)


class _Refusing:
    """A server whose start fails for another reason than a taken port."""

    async def __aenter__(self) -> None:
        raise OSError("not an address")

    async def __aexit__(self, *_exc: object) -> None:  # pragma: no cover - never entered
        return None
