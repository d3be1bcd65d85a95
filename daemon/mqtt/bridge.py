"""The MQTT bridge (docs/asyncapi.yaml) on aiomqtt 2.x, MQTT v5.

One long-running task (:meth:`MqttBridge.run`) keeps a connection to the broker, reconnecting
with capped exponential backoff and jitter. Whatever the broker or the link does (refuses,
resets, freezes so that CONNACK/SUBACK/PUBACK waits time out, sends garbage), the fault ends
only that connection, never :meth:`run`: timeouts and their exception groups included, the
socket is aborted at once (no waiting for a DISCONNECT a frozen broker will not read) and the
bridge connects again, republishing ``bridge/state`` online and every retained payload.
While connected it:

- publishes ``bridge/state`` ``{"state":"online"}`` retained QoS 1; the last will is
  ``{"state":"offline"}`` retained QoS 1 with no will delay, so the broker announces a crash
  at once; a clean stop (or cancellation) publishes ``offline`` itself before disconnecting;
- subscribes to ``pump/+/command`` with retain-as-published, so a retained command is seen as
  retained (and never executed);
- publishes retained payloads given to :meth:`publish_retained` (the latest per topic, kept in
  memory and republished after every reconnect);
- publishes events from the durable outbox in ``seq`` order, QoS 1, deleting each from the
  outbox only after its PUBACK (at-least-once: after a connection loss in the middle of a
  batch, an event may be delivered twice with the same ``seq``);
- publishes command results queued with :meth:`send_result` to ``pump/<id>/command/result``
  and, when the command carried a usable one, to its MQTT v5 response topic with its
  correlation data. A response topic is usable only outside ``infusiond/`` (so a command can
  never make the gateway publish on its own state, event, bridge or vitals topics, nor on any
  gateway's command topics): at most 256 bytes, no wildcards, no ``$`` prefix. An unusable one
  is ignored: the result goes to ``.../command/result`` only and carries the MQTT v5 user
  property ``response-topic-ignored`` saying why. Correlation data longer than 1 KiB is not
  copied (every result would repeat it: an amplifier) and the user property
  ``correlation-data-ignored`` says so.

Every queue is bounded and every drop counted in :attr:`MqttBridge.stats`: incoming commands
(taken from paho's callback straight into the command queue), queued results (the oldest
dropped first).

Sockets have TCP_NODELAY set: results and states are small and latency-bound.

Wiring (inside the supervisor's TaskGroup)::

    journal = await AsyncJournal.open(cfg.data_dir, gateway_id=cfg.gateway_id)
    bridge = MqttBridge(cfg.broker, gateway_id=cfg.gateway_id, client_id=cfg.client_id,
                        outbox=journal)
    tg.create_task(bridge.run(), name="mqtt-bridge")
    bridge.publish_retained(bridge.topics.pump_state("pump-1"), encode(envelope(
        Kind.PUMP_STATE, gateway=..., session=journal.session, seq=journal.seq,
        ts=utc_now(), data=state)))
    await journal.record_event("pump-1", RateChanged(...))  # the bridge publishes it
    async for incoming in bridge.commands():
        parsed = parse_command(incoming.payload, now=utc_now(), retained=incoming.retain)
        ...
        bridge.send_result(incoming.pump_id, payload, response_topic=incoming.response_topic,
                           correlation_data=incoming.correlation_data)
    # shutdown: bridge.stop(); await the task; await journal.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import time
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import aiomqtt
import structlog
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.base.config_sections import BrokerConfig
from daemon.base.envelope import BRIDGE_OFFLINE, BRIDGE_ONLINE
from daemon.base.topics import Topics, capped_id
from daemon.journal.records import JournalError, OutboxItem
from daemon.mqtt.bridge_inbound import Inbound, IncomingCommand
from daemon.mqtt.bridge_results import MAX_TOPIC_BYTES, ResultQueue, response_topic_problem
from daemon.mqtt.bridge_stats import BridgeStats
from daemon.mqtt.event_messages import outbox_message
from drivers.backoff import Backoff

log = structlog.get_logger("infusiond.mqtt")

MAX_INCOMING_PACKET = 256 * 1024  # the broker drops bigger packets for us; commands cap at 16 KiB
OFFLINE_TIMEOUT_S = 2.0
# A connection that lasted this long resets the backoff; one that failed sooner (a broker that
# accepts and then drops or kicks us at once) keeps it growing: no reconnect storm.
STABLE_S = 10.0
OUTBOX_RETRY_S = 1.0  # after a journal error (disk full, read-only): retry, never spin
# What a broker or the link to it can do to a connection: each ends that connection only.
LINK_FAULTS: tuple[type[Exception], ...] = (aiomqtt.MqttError, OSError, TimeoutError)


class Outbox(Protocol):
    """What the bridge needs from the journal (``daemon.journal.AsyncJournal`` provides it)."""

    outbox_changed: asyncio.Event

    @property
    def session(self) -> str:
        """The journal's session: what the events' envelopes carry."""
        ...

    async def outbox_pending(self, limit: int = ...) -> list[OutboxItem]: ...

    async def outbox_ack(self, seqs: Iterable[int]) -> int: ...


class BridgeState(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class _StopRequested(Exception):
    pass


class MqttBridge:
    """The gateway's MQTT connection. Run :meth:`run` as a named task; :meth:`stop` ends it."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        gateway_id: str,
        client_id: str,
        outbox: Outbox,
        backoff: Backoff | None = None,
        command_queue_size: int = 1024,
        max_queued_results: int = 1000,
        outbox_batch: int = 100,
        timeout_s: float = 10.0,
    ) -> None:
        self.topics = Topics(gateway_id)
        self._broker = broker
        self._client_id = client_id
        self._outbox = outbox
        self._backoff = backoff or Backoff(initial_s=0.2, maximum_s=30.0)
        self._online_since: float | None = None  # monotonic time of the last handshake
        self.stats = BridgeStats()
        self._inbound = Inbound(self.topics, self.stats, command_queue_size=command_queue_size)
        self.library_request_topic = self._inbound.library_request_topic
        self.library_response_topic = f"{self.topics.root}/bridge/response/library"
        self.events_request_topic = self._inbound.events_request_topic
        self.events_response_topic = f"{self.topics.root}/bridge/response/events"
        self._results = ResultQueue(self.stats, max_queued=max_queued_results)
        self._retained: dict[str, bytes] = {}
        self._dirty: dict[str, None] = {}  # ordered set of retained topics to (re)publish
        self._retained_changed = asyncio.Event()
        self._outbox_batch = outbox_batch
        self._timeout_s = timeout_s  # CONNACK, SUBACK and PUBACK waits
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.online = asyncio.Event()
        self.state = BridgeState.STOPPED
        self._state_changed = asyncio.Condition()

    # -- public API --------------------------------------------------------------------------

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained (QoS 1) on ``topic`` now if connected, and after every
        reconnect. Only the latest payload per topic is kept (a burst during an outage
        collapses into one message). An empty payload clears the topic at the broker."""
        self._retained[topic] = payload
        self._dirty[topic] = None
        self._retained_changed.set()

    def send_result(
        self,
        pump_id: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Queue a command result (QoS 1, not retained) on ``pump/<id>/command/result`` and, if
        given and usable (see the module docstring), on ``response_topic`` too, both carrying
        ``correlation_data``. Never blocks, never raises.

        Results are kept in memory while the broker is unreachable, in order, at most
        ``max_queued_results`` of them: beyond that the oldest is dropped (and counted)."""
        topic = self.topics.pump_command_result(pump_id)
        if len(topic.encode("utf-8", "replace")) > MAX_TOPIC_BYTES:
            self.stats.results_dropped += 1  # no MQTT topic can name that pump
            log.warning("result dropped: pump id too long for a topic", pump_id=capped_id(pump_id))
            return
        self._results.put(topic, payload, response_topic, correlation_data)

    def send_library_response(
        self,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Queue the answer to a library push on ``bridge/response/library`` (and on the
        request's usable ``response_topic``), like a command result."""
        self._results.put(self.library_response_topic, payload, response_topic, correlation_data)

    def send_events_response(self, payload: bytes) -> None:
        """Queue the answer to a backfill request on ``bridge/response/events``."""
        self._results.put(self.events_response_topic, payload, None, None)

    def events_requests(self) -> AsyncIterator[IncomingCommand]:
        """Messages on ``bridge/request/events``, in arrival order (``pump_id`` is empty)."""
        return self._inbound.events_requests()

    def library_requests(self) -> AsyncIterator[IncomingCommand]:
        """Messages on ``bridge/request/library``, in arrival order (``pump_id`` is empty)."""
        return self._inbound.library_requests()

    def response_topic_problem(self, topic: str) -> str | None:
        """Why ``topic`` cannot be used as a response topic, or None when it can."""
        return response_topic_problem(topic)

    def commands(self) -> AsyncIterator[IncomingCommand]:
        """Incoming commands, in arrival order, across reconnects."""
        return self._inbound.commands()

    def stop(self) -> None:
        """Ask :meth:`run` to publish ``offline``, disconnect cleanly and return."""
        self._stop.set()

    async def wait_state(self, state: BridgeState, *, connections: int = 0) -> None:
        """Wait until the bridge is in ``state`` (and has connected at least ``connections``
        times): an event for tests and for the supervisor's readiness."""
        async with self._state_changed:
            await self._state_changed.wait_for(
                lambda: self.state is state and self.stats.connections >= connections
            )

    def tcp_nodelay(self) -> bool | None:
        """TCP_NODELAY on the live socket (None when not connected)."""
        client = self._client  # aiomqtt has no public socket accessor; paho's is public
        sock = client._client.socket() if client is not None else None
        if not isinstance(sock, socket.socket):
            return None
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    # -- connection loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after :meth:`stop`."""
        try:
            while not self._stop.is_set():
                await self._set_state(BridgeState.CONNECTING)
                try:
                    await self._connection()
                except* LINK_FAULTS as group:  # one fault or a group of them (e.g. timeouts)
                    first = _first_leaf(group)
                    self.stats.link_faults += 1
                    self.stats.last_error = f"{type(first).__name__}: {first}"
                    log.warning(
                        "mqtt connection lost or refused",
                        error=self.stats.last_error,
                        faults=len(_leaves(group)),
                    )
                if self._stop.is_set():
                    break
                await self._set_state(BridgeState.BACKOFF)
                if self._online_since is not None:  # it had come up: was it stable?
                    if time.monotonic() - self._online_since >= STABLE_S:
                        self._backoff.reset()
                    self._online_since = None
                delay = self._backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        finally:
            self.online.clear()
            self.state = BridgeState.STOPPED
            async with self._state_changed:
                self._state_changed.notify_all()

    async def _set_state(self, state: BridgeState) -> None:
        self.state = state
        if state is BridgeState.ONLINE:
            self.online.set()
        else:
            self.online.clear()
        async with self._state_changed:
            self._state_changed.notify_all()

    def _make_client(self) -> aiomqtt.Client:
        broker = self._broker
        tls = None
        if broker.uses_tls:
            files = broker.tls
            tls = aiomqtt.TLSParameters(
                ca_certs=str(files.ca_file) if files and files.ca_file else None,
                certfile=str(files.cert_file) if files and files.cert_file else None,
                keyfile=str(files.key_file) if files and files.key_file else None,
            )
        v5 = broker.protocol == "5"
        connect_props: Properties | None = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.MaximumPacketSize = MAX_INCOMING_PACKET
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topics.bridge_state, BRIDGE_OFFLINE, qos=1, retain=True),
            keepalive=broker.keepalive_s,
            clean_start=True if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            clean_session=None if v5 else True,
            properties=connect_props,
            tls_params=tls,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            timeout=self._timeout_s,
        )
        # Messages go straight from paho to the bounded queues (see Inbound.on_message);
        # aiomqtt's own queue and iterator cost a task and a future per message.
        client._client.on_message = self._inbound.on_message
        # Batches of QoS 1 publishes are normal here; aiomqtt warns (once per publish!) above
        # 10 by default. Warn only beyond what our bounded queues can have in flight at once:
        # a batch of events, a batch of results (two topics each) and every retained topic.
        client.pending_calls_threshold = (
            self._outbox_batch + 2 * self._results.max_queued + len(self._retained) + 10
        )
        return client

    async def _connection(self) -> None:
        client = self._make_client()
        try:
            async with client:
                self._client = client
                try:
                    await self._handshake(client)
                    await self._serve(client)
                except asyncio.CancelledError:
                    await self._say_offline(client)
                    raise
                except BaseException:  # a fault: the link is suspect, do not wait on it
                    self._abort(client)
                    raise
                else:
                    await self._say_offline(client)
                finally:
                    self._client = None
                    self.online.clear()
        except asyncio.CancelledError:
            raise
        except BaseException:  # the CONNECT failed too (no CONNACK): aiomqtt leaves its socket
            self._abort(client)
            raise

    async def _handshake(self, client: aiomqtt.Client) -> None:
        if self._broker.protocol == "5":
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            await client.subscribe(
                [
                    (self.topics.command_filter, options),
                    (self.library_request_topic, options),
                    (self.events_request_topic, options),
                ]
            )
        else:  # 3.1.1: retain is only seen on messages stored before we subscribed
            await client.subscribe(
                [
                    (self.topics.command_filter, 1),
                    (self.library_request_topic, 1),
                    (self.events_request_topic, 1),
                ]
            )
        await client.publish(self.topics.bridge_state, BRIDGE_ONLINE, qos=1, retain=True)
        self._online_since = time.monotonic()
        self.stats.connections += 1
        for topic in self._retained:
            self._dirty[topic] = None
        log.info("mqtt online", host=self._broker.host, port=self._broker.port)
        await self._set_state(BridgeState.ONLINE)

    @staticmethod
    def _abort(client: aiomqtt.Client) -> None:
        """Shut the socket down so that the client's exit sees the connection gone at once
        (a frozen broker would never answer DISCONNECT: the exit would wait its timeout)."""
        sock = client._client.socket()  # aiomqtt has no public socket accessor; paho's is public
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Best effort on the way out; if the link is gone, the broker sends the will."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.topics.bridge_state,
                BRIDGE_OFFLINE,
                qos=1,
                retain=True,
                timeout=OFFLINE_TIMEOUT_S,
            )

    async def _serve(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(client), name="mqtt-watch")
                tg.create_task(self._retained_loop(client), name="mqtt-retained")
                tg.create_task(self._outbox_loop(client), name="mqtt-outbox")
                tg.create_task(
                    self._results.publish_loop(client, v5=self._broker.protocol == "5"),
                    name="mqtt-results",
                )
                tg.create_task(self._until_stop(), name="mqtt-stop")
        except BaseExceptionGroup as group:
            _, rest = group.split(_StopRequested)
            if rest is not None and self._stop.is_set():
                _, rest = rest.split(LINK_FAULTS)  # the link failed as we were leaving anyway
            if rest is not None:
                raise rest from None

    async def _until_stop(self) -> None:
        await self._stop.wait()
        raise _StopRequested

    # -- per-connection tasks ----------------------------------------------------------------

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raise when the connection is lost (the client's message iterator does; messages
        themselves never reach it: :meth:`Inbound.on_message` takes them first)."""
        async for _ in client.messages:
            pass

    async def _retained_loop(self, client: aiomqtt.Client) -> None:
        while True:
            self._retained_changed.clear()
            if not self._dirty:
                await self._retained_changed.wait()
                continue
            batch = list(self._dirty)
            self._dirty.clear()
            try:
                async with asyncio.TaskGroup() as tg:
                    for topic in batch:
                        tg.create_task(
                            client.publish(topic, self._retained[topic], qos=1, retain=True),
                            name="mqtt-publish-retained",
                        )
            except BaseException:
                for topic in batch:  # republish them on the next connection
                    self._dirty[topic] = None
                raise
            self.stats.retained_published += len(batch)

    async def _outbox_loop(self, client: aiomqtt.Client) -> None:
        while True:
            self._outbox.outbox_changed.clear()
            try:
                items = await self._outbox.outbox_pending(limit=self._outbox_batch)
            except JournalError as exc:  # disk full / read-only: keep the connection, retry
                log.warning("outbox unreadable; retrying", error=str(exc))
                await asyncio.sleep(OUTBOX_RETRY_S)
                continue
            if not items:
                await self._outbox.outbox_changed.wait()
                continue
            session = self._outbox.session
            async with asyncio.TaskGroup() as tg:  # PUBLISHes go out in seq order
                for item in items:
                    topic, payload = outbox_message(item, topics=self.topics, session=session)
                    tg.create_task(client.publish(topic, payload, qos=1), name="mqtt-publish-event")
            try:
                await self._outbox.outbox_ack([item.seq for item in items])
            except JournalError as exc:  # they stay queued: published again, same seq
                log.warning("outbox ack not recorded; retrying", error=str(exc))
                await asyncio.sleep(OUTBOX_RETRY_S)
                continue
            self.stats.events_published += len(items)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _first_leaf(exc: BaseException) -> BaseException:
    return _leaves(exc)[0]
