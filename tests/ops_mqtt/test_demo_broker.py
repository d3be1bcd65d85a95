"""The demo's broker: mosquitto as a child process speaking MQTT v5, live messages never flagged
retained, a port taken meanwhile retried, its log kept, and never left running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from daemon.demo.broker import BrokerKind, demo_broker, mosquitto_binary, mosquitto_broker
from tests.support.procs import free_port, wait_for_line

V5 = aiomqtt.ProtocolVersion.V5
HOST = "127.0.0.1"

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


@pytest.mark.asyncio
async def test_demo_broker_is_mosquitto_and_a_v5_client_gets_its_response_properties(
    tmp_path: Path,
) -> None:
    """A v5 request with response topic and correlation data reaches a v5 responder intact,
    over the demo's broker; a WebSocket client connects too; the broker's log lands in the
    demo's log directory."""
    async with demo_broker(HOST, log_dir=tmp_path / "logs") as broker:
        assert broker.kind is BrokerKind.MOSQUITTO
        assert broker.protocol == "5"
        assert broker.ws_url is not None
        async with (
            aiomqtt.Client(HOST, broker.port, protocol=V5, identifier="responder") as responder,
            aiomqtt.Client(HOST, broker.port, protocol=V5, identifier="requester") as requester,
        ):
            await responder.subscribe("req/+", qos=1)
            await requester.subscribe("replies/me", qos=1)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "replies/me"
            props.CorrelationData = b"c-42"
            await requester.publish("req/x", b"ping", qos=1, properties=props)
            async with asyncio.timeout(10):
                request = await anext(responder.messages)
            assert request.properties is not None
            assert request.properties.ResponseTopic == "replies/me"
            answer = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            answer.CorrelationData = request.properties.CorrelationData
            await responder.publish("replies/me", b"pong", qos=1, properties=answer)
            async with asyncio.timeout(10):
                reply = await anext(requester.messages)
            assert reply.payload == b"pong"
            assert reply.properties is not None
            assert reply.properties.CorrelationData == b"c-42"
        assert broker.ws_port is not None  # the dashboard's way in: MQTT over WebSockets
        async with aiomqtt.Client(
            HOST, broker.ws_port, protocol=V5, transport="websockets", identifier="browser"
        ) as browser:
            await browser.publish("ws/hello", b"hi", qos=1)
        assert broker.log_path == tmp_path / "logs" / "mosquitto.log"
    log = (tmp_path / "logs" / "mosquitto.log").read_text()
    assert "running" in log
    assert "as responder (p5" in log  # the client connected with protocol 5


@pytest.mark.asyncio
async def test_mosquitto_sub_sees_live_messages_unflagged_and_stored_ones_flagged(
    tmp_path: Path,
) -> None:
    """``mosquitto_sub -F %r``: a retained message stored before subscribing arrives with
    retain 1; a retained and a plain publication made while subscribed arrive with retain 0."""
    async with (
        demo_broker(HOST, log_dir=tmp_path / "logs") as broker,
        aiomqtt.Client(HOST, broker.port, protocol=V5, identifier="pub") as pub,
    ):
        await pub.publish("t/state", b"stored", qos=1, retain=True)
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                *("-h", HOST, "-p", str(broker.port), "-V", "mqttv5", "-q", "1"),
                *("-t", "t/#", "-t", "ready", "-C", "4", "-F", "%r %t %p"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # mosquitto_sub says nothing when subscribed: the stored message is its first line
            first = await asyncio.to_thread(wait_for_line, sub, b"stored", 10.0, sub.stdout)
            await pub.publish("t/state", b"live-retained", qos=1, retain=True)
            await pub.publish("t/event", b"live", qos=1)
            await pub.publish("ready", b"end", qos=1)
            out, _ = await asyncio.to_thread(sub.communicate, timeout=10)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.communicate()
    lines = (first + out).decode().splitlines()
    assert lines == ["1 t/state stored", "0 t/state live-retained", "0 t/event live", "0 ready end"]


@contextlib.contextmanager
def listening_on_some_port() -> Iterator[int]:
    """A loopback port held by a listening socket (what a busy demo port looks like)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.asyncio
async def test_a_port_taken_meanwhile_is_retried_on_other_ports(tmp_path: Path) -> None:
    """mosquitto cannot bind port 0: when the chosen port is taken by the time it binds, its own
    log says so and the demo starts it again on other ports."""
    binary = mosquitto_binary()
    assert binary is not None
    with listening_on_some_port() as taken:
        offered = iter([(taken, free_port())])

        def ports() -> tuple[int, int]:
            return next(offered)

        async with mosquitto_broker(binary, host=HOST, log_dir=tmp_path, ports=ports) as broker:
            assert broker.port != taken
            async with aiomqtt.Client(HOST, broker.port, protocol=V5, identifier="c"):
                pass
    assert "Address already in use" in (tmp_path / "mosquitto.log").read_text()


_HOLDER = """
import asyncio, sys
from pathlib import Path
from daemon.demo.broker import demo_broker

async def main() -> None:
    async with demo_broker("127.0.0.1", log_dir=Path(sys.argv[1])) as broker:
        print("mosquitto-pid", broker.pid, "end", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_mosquitto_dies_with_the_demo_even_when_the_demo_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the demo process (no clean-up runs) still ends the mosquitto child."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "TMPDIR": str(tmp_path),  # the killed demo cannot remove its mosquitto.conf dir
        },
    )
    try:
        said = wait_for_line(holder, b" end\n", 30.0, holder.stdout).decode()
        child = int(said.split("mosquitto-pid ", 1)[1].split()[0])
        pidfd = os.pidfd_open(child)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    try:
        readable, _, _ = select.select([pidfd], [], [], 10.0)  # readable once the child exited
        assert readable == [pidfd], f"mosquitto {child} outlived the demo"
    finally:
        os.close(pidfd)


@pytest.mark.asyncio
async def test_without_mosquitto_the_fallback_says_it_speaks_3_1_1_only(tmp_path: Path) -> None:
    """No mosquitto binary: amqtt serves the demo over MQTT 3.1.1, and the log says so."""
    with capture_logs() as logs:
        async with demo_broker(HOST, log_dir=tmp_path, find_mosquitto=lambda: None) as broker:
            assert (broker.kind, broker.protocol) == (BrokerKind.AMQTT, "3.1.1")
            async with aiomqtt.Client(
                HOST, broker.port, protocol=aiomqtt.ProtocolVersion.V311, identifier="old"
            ):
                pass
    (fallback,) = [e for e in logs if e["event"] == "demo_broker_fallback"]
    assert fallback["log_level"] == "warning"
    assert "MQTT 3.1.1 only" in fallback["protocol"]
