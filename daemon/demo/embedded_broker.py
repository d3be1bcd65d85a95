"""The demo's fallback MQTT broker (amqtt, MQTT 3.1.1), on loopback only.

The demo runs mosquitto (MQTT v5) when it is installed (``daemon.demo.broker``); this broker is
used only without it. amqtt speaks MQTT 3.1.1 only, so the demo's daemon then connects with
``broker.protocol = "3.1.1"``. A WebSocket listener is offered for the web dashboard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from amqtt.broker import Broker
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
    """amqtt 0.12 with one fix: on every CONNECT, amqtt sends the new client the retained
    messages of *every* filter any client ever subscribed to (it loops over the broker-wide
    subscription table, not the session's). Retained messages are only sent for filters the
    session holds.

    Live messages reach subscribers with the retain flag cleared (MQTT 3.1.1); only retained
    messages sent to a new subscription carry it. Over 3.1.1 the daemon therefore recognises a
    retained command only when it was stored before the daemon subscribed (a re-delivery after
    a restart, the case that matters); a live one is an ordinary command (and its id is never
    executed twice).
    """

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
