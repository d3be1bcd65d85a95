"""The demo's fallback broker (amqtt, used without mosquitto) relays, retains, never flags live
messages retained, and sends retained messages only for the subscriber's own filters (works
around an amqtt 0.12 bug)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import aiomqtt
import pytest
from amqtt.errors import BrokerError

from daemon.demo.embedded_broker import EmbeddedBroker, embedded_broker
from tests.support.procs import retry_address_in_use

V311 = aiomqtt.ProtocolVersion.V311


def loopback_broker() -> AbstractAsyncContextManager[tuple[EmbeddedBroker, int]]:
    """The embedded broker on a free loopback port (amqtt takes a fixed port here: a port
    taken between choosing and binding it is retried on another)."""
    return retry_address_in_use(
        lambda port: embedded_broker("127.0.0.1", port), errors=(BrokerError,)
    )


@pytest.mark.asyncio
async def test_a_new_client_gets_only_retained_messages_of_its_own_filters() -> None:
    """After c1 subscribed to r/+/state, c2 subscribing to r/a/result gets no retained state."""
    async with (
        loopback_broker() as (broker, port),
        aiomqtt.Client("127.0.0.1", port, protocol=V311, identifier="pub") as p,
    ):
        await p.publish("r/a/state", b"s1", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=V311, identifier="c1") as c1:
            await c1.subscribe("r/+/state", qos=1)
            first = await anext(c1.messages)
            assert (first.topic.value, first.payload, first.retain) == (
                "r/a/state",
                b"s1",
                True,
            )
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=V311, identifier="c2") as c2:
            await c2.subscribe("r/a/result", qos=1)
            await p.publish("r/a/result", b"res", qos=1)
            async with asyncio.timeout(5):
                got = await anext(c2.messages)
            assert (got.topic.value, got.payload) == ("r/a/result", b"res")


@pytest.mark.asyncio
async def test_live_messages_arrive_unflagged_and_only_stored_ones_flagged_retained() -> None:
    """MQTT 3.1.1: a retained publication reaches live subscribers with retain 0 (Home
    Assistant and Node-RED treat retained as old); a subscriber that arrives later gets the
    stored message with retain 1 (the daemon refuses a stored, retained command)."""
    async with (
        loopback_broker() as (_, port),
        aiomqtt.Client("127.0.0.1", port, protocol=V311, identifier="sub") as sub,
        aiomqtt.Client("127.0.0.1", port, protocol=V311, identifier="pub") as pub,
    ):
        await sub.subscribe("gw/pump/+/command", qos=1)
        await pub.publish("gw/pump/p1/command", b"live", qos=1)
        await pub.publish("gw/pump/p1/command", b"kept", qos=1, retain=True)
        async with asyncio.timeout(5):
            first = await anext(sub.messages)
            second = await anext(sub.messages)
        assert (first.payload, first.retain) == (b"live", False)
        assert (second.payload, second.retain) == (b"kept", False)
    async with (
        loopback_broker() as (_, port),
        aiomqtt.Client("127.0.0.1", port, protocol=V311, identifier="pub2") as pub,
    ):
        await pub.publish("gw/pump/p1/command", b"stored", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", port, protocol=V311, identifier="late") as late:
            await late.subscribe("gw/pump/+/command", qos=1)
            async with asyncio.timeout(5):
                stored = await anext(late.messages)
            assert (stored.payload, stored.retain) == (b"stored", True)
