"""The demo's embedded MQTT broker (amqtt, MQTT 3.1.1), on loopback only.

Production uses mosquitto (see ``systemd/mosquitto.conf``); this exists so that ``infusiond
demo`` needs nothing installed. amqtt speaks MQTT 3.1.1 only, so the demo's daemon connects with
``broker.protocol = "3.1.1"``. A WebSocket listener is offered for the web dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.session import Session


@dataclass(frozen=True, slots=True)
class EmbeddedBroker:
    """Where the running embedded broker listens."""

    host: str
    port: int
    ws_port: int | None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str | None:
        return None if self.ws_port is None else f"ws://{self.host}:{self.ws_port}/"


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt 0.12 with two changes for the demo:

    - a fix: on every CONNECT, amqtt sends the new client the retained messages of *every*
      filter any client ever subscribed to (it loops over the broker-wide subscription table,
      not the session's). Retained messages are only sent for filters the session holds.
    - retain-as-published: a retained PUBLISH is delivered to live subscribers with its retain
      flag set (MQTT 3.1.1 brokers clear it; MQTT v5's retain-as-published keeps it). The
      daemon refuses retained commands, and over 3.1.1 this is the only way it can tell.
    """

    async def _handle_message_delivery(
        self, client_session: Session, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        packet = getattr(message, "publish_packet", None)
        topic = getattr(message, "topic", None)
        if (
            packet is None
            or not packet.retain_flag
            or not topic
            or any(c in topic for c in "+#")
            or topic.startswith("$")
            or not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH)
        ):
            result: bool = await super()._handle_message_delivery(
                client_session, handler, wait_deliver
            )
            return result
        await self.retain_message(client_session, topic, message.data, message.qos)
        deliveries = []
        for topic_filter, subscriptions in self._subscriptions.items():
            if not self._matches(topic, topic_filter):
                continue
            for target, sub_qos in subscriptions:
                target_handler = self._get_handler(target)
                if target.transitions.state == "connected" and target_handler is not None:
                    qos = min(message.qos or 0, sub_qos)
                    deliveries.append(
                        target_handler.mqtt_publish(topic, message.data, qos, retain=True)
                    )
        await asyncio.gather(*deliveries, return_exceptions=True)
        return True

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        holders = self._subscriptions.get(subscription[0], [])
        if any(held.client_id == session.client_id for held, _qos in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)


@contextlib.asynccontextmanager
async def embedded_broker(
    host: str, port: int, ws_port: int | None = None
) -> AsyncIterator[EmbeddedBroker]:
    """Start amqtt on ``host:port`` (and ``ws_port`` for WebSockets); stop it on exit."""
    listeners: dict[str, dict[str, object]] = {
        "default": {"type": "tcp", "bind": f"{host}:{port}"},
    }
    if ws_port is not None:
        listeners["ws"] = {"type": "ws", "bind": f"{host}:{ws_port}"}
    config = {
        "listeners": listeners,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    # amqtt logs every connection at INFO through stdlib logging; keep the demo readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    broker = _Broker(config)
    await broker.start()
    try:
        yield EmbeddedBroker(host, port, ws_port)
    finally:
        await broker.shutdown()
