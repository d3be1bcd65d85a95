"""What the MQTT bridge receives: commands on ``pump/+/command``, library pushes on
``bridge/request/library`` and backfill requests on ``bridge/request/events``, each routed from
paho's callback straight into its own bounded queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from paho.mqtt.client import MQTTMessage

from daemon.base.topics import Topics, capped_id
from daemon.mqtt.bridge_stats import BridgeStats, rarely

log = structlog.get_logger("infusiond.mqtt")

#: drug-library pushes waiting for the gateway (each is vetted in turn; a burst is refused)
LIBRARY_QUEUE_SIZE = 16
#: fleet collectors' backfill requests waiting for the journal (a burst beyond is dropped:
#: the collectors ask again)
EVENTS_QUEUE_SIZE = 64


@dataclass(frozen=True)
class IncomingCommand:
    """A message on ``pump/<pump_id>/command``, unparsed (see ``daemon.mqtt.command_parse``)."""

    pump_id: str
    payload: bytes
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None


class Inbound:
    """The three request queues and the paho callback that fills them."""

    def __init__(self, topics: Topics, stats: BridgeStats, *, command_queue_size: int) -> None:
        self._topics = topics
        self._stats = stats
        self.library_request_topic = f"{topics.root}/bridge/request/library"
        self.events_request_topic = f"{topics.root}/bridge/request/events"
        self._commands: asyncio.Queue[IncomingCommand] = asyncio.Queue(command_queue_size)
        self._library_requests: asyncio.Queue[IncomingCommand] = asyncio.Queue(LIBRARY_QUEUE_SIZE)
        self._events_requests: asyncio.Queue[IncomingCommand] = asyncio.Queue(EVENTS_QUEUE_SIZE)

    async def commands(self) -> AsyncIterator[IncomingCommand]:
        """Incoming commands, in arrival order, across reconnects."""
        while True:
            yield await self._commands.get()

    async def events_requests(self) -> AsyncIterator[IncomingCommand]:
        """Messages on ``bridge/request/events``, in arrival order (``pump_id`` is empty)."""
        while True:
            yield await self._events_requests.get()

    async def library_requests(self) -> AsyncIterator[IncomingCommand]:
        """Messages on ``bridge/request/library``, in arrival order (``pump_id`` is empty)."""
        while True:
            yield await self._library_requests.get()

    def on_message(self, _client: object, _userdata: object, message: MQTTMessage) -> None:
        """paho's message callback, in the event loop's reader: one message to the bounded
        command queue, with no task, future or copy per message (a flood of thousands per
        second must cost little more than its bytes)."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker validates topics; a broken one could not
            self._stats.commands_dropped += 1
            return
        pump_id = self._topics.pump_id_of_command(topic)
        library = topic == self.library_request_topic
        events = topic == self.events_request_topic
        if pump_id is None and not library and not events:
            return
        props = message.properties
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        payload = message.payload
        incoming = IncomingCommand(
            pump_id=pump_id or "",
            payload=payload if isinstance(payload, bytes) else bytes(payload),
            retain=bool(message.retain),
            response_topic=response if isinstance(response, str) else None,
            correlation_data=bytes(correlation) if isinstance(correlation, bytes) else None,
        )
        if library:
            self._queue_library_request(incoming)
            return
        if events:
            try:
                self._events_requests.put_nowait(incoming)
            except asyncio.QueueFull:
                log.warning("events request queue full; request dropped")
            return
        try:
            self._commands.put_nowait(incoming)
        except asyncio.QueueFull:
            self._stats.commands_dropped += 1
            if rarely(self._stats.commands_dropped):
                log.warning(
                    "command queue full; command dropped",
                    pump_id=capped_id(incoming.pump_id),
                    dropped=self._stats.commands_dropped,
                )

    def _queue_library_request(self, incoming: IncomingCommand) -> None:
        try:
            self._library_requests.put_nowait(incoming)
        except asyncio.QueueFull:  # a burst of pushes: the later ones are dropped, and logged
            log.warning("library request queue full; request dropped")
