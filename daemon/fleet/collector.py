"""``infusiond fleet collect``: MQTT (v5, QoS 1, persistent session) -> PostgreSQL, in batches.

Subscriptions (``infusiond/+/...``): events and command results, through
``$share/<group>/`` when a group is given (the collectors of a group split them); states,
``bridge/info`` and ``bridge/state`` always directly (a shared subscription gets no retained
messages, and every collector storing them costs one idempotent upsert); and
``bridge/response/events`` directly (every collector stores an answer, the requester follows
it up).

Nothing is acknowledged before it is committed: the MQTT client runs with manual acks (paho's
``manual_ack``), and a batch's PUBACKs are sent after its transaction commits. The session is
persistent (fixed client id, clean start off, a session expiry), so a collector killed with -9
gets its unacknowledged and queued messages again when it comes back; what a session cannot
keep (expired, or a broker restart without persistence) is found as a seq gap and backfilled.

The hot path is lean (docs/performance.md, "Fleet ingest"): paho's ``on_message`` (called in
the event loop's thread, where aiomqtt reads the socket) appends ``(topic, payload, qos,
mid)`` to an inbox and sets one event; the ingest task takes a whole batch in one step (no
per-message task, queue or ``aiomqtt.Message``); paho reads through a buffer; the batch is
COPYed as one buffer and its PUBACKs are queued as one write after the commit. The inbox, the
buffer and the batched PUBACKs reach into paho's internals: :mod:`daemon.fleet.paho_tuning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import aiomqtt
import psycopg
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.fleet import gaps
from daemon.fleet.backfill import Backfill
from daemon.fleet.errors import BrokerRefused, DatabaseUnavailable
from daemon.fleet.migrate import migrate
from daemon.fleet.paho_tuning import (
    PUBACK,
    PUBACK_TYPE,
    Inbox,
    Received,
    TlsAlert,
    buffer_reads,
    fail_fast_on_tls_alert,
    is_login_refusal,
)
from daemon.fleet.records import (
    BadMessage,
    Batch,
    EventsResponse,
    parse_message,
)
from daemon.fleet.seqranges import SeqRanges
from daemon.fleet.store import Conn, connect, store_batch_isolating
from drivers.backoff import Backoff

log = structlog.get_logger("infusiond.fleet.collector")

SHARED_TOPICS = ("infusiond/+/pump/+/event", "infusiond/+/pump/+/command/result")
DIRECT_TOPICS = (
    "infusiond/+/pump/+/state",
    "infusiond/+/bridge/info",
    "infusiond/+/bridge/state",
    "infusiond/+/bridge/response/events",
)
#: how long a stop waits for the batch being committed (and acknowledged) to finish
STOP_GRACE_S = 10.0
#: faults of the broker link or the database that end one connection, not the collector
LINK_FAULTS: tuple[type[Exception], ...] = (
    aiomqtt.MqttError,
    OSError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    DatabaseUnavailable,
)


@dataclass(frozen=True)
class CollectorConfig:
    """What ``fleet collect`` was given (see docs/fleet.md)."""

    host: str
    port: int
    dsn: str
    client_id: str
    group: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    batch_max: int = 500
    batch_wait_s: float = 0.05
    session_expiry_s: int = 24 * 3600
    #: unacknowledged messages in flight (None: four batches, at least 1000), so that the
    #: broker keeps sending while a batch commits
    receive_maximum: int | None = None
    keepalive_s: int = 30
    backfill_interval_s: float = 0.5
    progress_interval_s: float = 10.0
    grace: timedelta = gaps.DEFAULT_GRACE
    #: for an ``mqtts://`` broker (built from ``[broker.tls]`` by
    #: :func:`daemon.fleet.collect_settings.tls_context`); None: plain TCP
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def in_flight(self) -> int:
        """The MQTT v5 Receive Maximum the collector announces (at most 65535)."""
        if self.receive_maximum is not None:
            return self.receive_maximum
        return min(65535, max(1000, 4 * self.batch_max))

    def subscriptions(self) -> list[str]:
        shared = [f"$share/{self.group}/{t}" if self.group else t for t in SHARED_TOPICS]
        return [*shared, *DIRECT_TOPICS]


@dataclass
class CollectorStats:
    messages: int = 0
    batches: int = 0
    events_inserted: int = 0
    events_duplicate: int = 0
    bad_messages: int = 0
    connections: int = 0
    last_error: str | None = None


@dataclass
class _Pending:
    """Received, not yet committed: the records and the messages to acknowledge after."""

    batch: Batch = field(default_factory=Batch)
    responses: list[EventsResponse] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    count: int = 0


class Collector:
    """Run :meth:`run` (as a named task); :meth:`stop` ends it (a batch not yet committed is
    not acknowledged either: the broker delivers it again to the same session)."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.stats = CollectorStats()
        self.online = asyncio.Event()  # set while connected and subscribed
        self._stop = asyncio.Event()
        #: set while no batch is being committed: a stop waits for it, so that a committed
        #: batch is always acknowledged (else its messages come again: stored once, but late)
        self._between_batches = asyncio.Event()
        self._between_batches.set()
        self._seen: dict[tuple[str, str], SeqRanges] = defaultdict(SeqRanges)
        self._dirty: set[tuple[str, str]] = set()
        self._checked: set[tuple[str, str]] = set()  # sessions refreshed once by this process
        self._backoff = Backoff(initial_s=0.2, maximum_s=10.0)
        self._inbox: Inbox | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Connect (PostgreSQL, then the broker) and collect until :meth:`stop`; every link
        fault is logged and retried with capped backoff.

        Except one: before the first connection succeeded, a broker refusing the TLS handshake
        or the login raises :class:`BrokerRefused` (the configuration is wrong; retrying
        forever would only hide it). Once it has worked, the same refusal is retried: a
        certificate or password being rotated on the broker must not stop the collection."""
        while not self._stop.is_set():
            refused: BrokerRefused | None = None
            try:
                await self._run_once()
            except* LINK_FAULTS as group:
                self.stats.last_error = "; ".join(str(e) for e in group.exceptions)[:300]
                if self.stats.connections == 0:
                    refused = self._refusal(group.exceptions)
                if refused is None:
                    log.warning("collector_link_lost", error=self.stats.last_error)
            if refused is not None:
                raise refused
            self.online.clear()
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._backoff.next_delay())

    def _refusal(self, faults: tuple[BaseException, ...]) -> BrokerRefused | None:
        """The broker's refusal among ``faults``, as one line naming what to check."""
        where = f"the broker at {self.config.host}:{self.config.port}"
        for fault in faults:
            if isinstance(fault, aiomqtt.MqttCodeError) and is_login_refusal(fault.rc):
                code = getattr(fault.rc, "value", fault.rc)
                who = f"user {self.config.username!r}" if self.config.username else "anonymous"
                return BrokerRefused(
                    f"{where} refused the login ({who}): CONNACK reason code {code} "
                    f"({fault.rc}); check [broker] username, the password ({_PASSWORD_SOURCES}) "
                    "and the broker's password file and ACL"
                )
            cause = fault.__context__  # aiomqtt raises ``from None``: the cause is kept here
            if isinstance(cause, ssl.SSLCertVerificationError):
                return BrokerRefused(
                    f"{where} presented a certificate this collector does not trust "
                    f"({cause.verify_message}); check [broker.tls] ca_file and that the URL's "
                    "host is in the broker's certificate"
                )
            if isinstance(cause, ssl.SSLError) or isinstance(fault, TlsAlert):
                reason = cause.reason if isinstance(cause, ssl.SSLError) else fault
                return BrokerRefused(
                    f"{where} refused the TLS session ({reason}); check [broker.tls] "
                    "cert_file and key_file (a client certificate its CA signed) and ca_file"
                )
        return None

    async def _run_once(self) -> None:
        ingest = await connect(self.config.dsn)
        control = await connect(self.config.dsn)
        async with ingest, control:
            applied = await migrate(control)
            if applied:
                log.info("schema_migrated", versions=[m.version for m in applied])
            client = self._client()
            async with client:
                client._client.on_log = None  # connected: see fail_fast_on_tls_alert
                buffer_reads(client)
                await client.subscribe(
                    [(t, SubscribeOptions(qos=1)) for t in self.config.subscriptions()]
                )
                self.stats.connections += 1
                self._backoff.reset()
                self.online.set()
                log.info(
                    "collector_online",
                    broker=f"{self.config.host}:{self.config.port}",
                    client_id=self.config.client_id,
                    group=self.config.group,
                )

                async def publish(topic: str, payload: bytes) -> None:
                    await client.publish(topic, payload, qos=1)

                backfill = Backfill(
                    control, publish, requester=self.config.client_id, grace=self.config.grace
                )
                self._dirty.update(await self._unsettled_sessions(control))
                await self._serve(client, ingest, backfill)

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.in_flight
        client = aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id,
            username=self.config.username,
            password=self.config.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=self.config.keepalive_s,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_inflight_messages=self.config.in_flight,
            tls_context=self.config.tls_context,
        )
        if self.config.tls_context is not None:
            fail_fast_on_tls_alert(client)
        # PUBACK only after the commit (aiomqtt has no public switch; paho's is public)
        client._client.manual_ack_set(True)  # noqa: FBT003 - paho's signature
        # messages straight from paho into the inbox (in place of aiomqtt's per-message queue)
        self._inbox = Inbox(asyncio.get_running_loop())
        client._client.on_message = self._inbox.on_message
        return client

    @staticmethod
    async def _unsettled_sessions(conn: Conn) -> set[tuple[str, str]]:
        cur = await conn.execute(
            "SELECT gateway, session FROM sessions WHERE contiguous_upto < high_water"
        )
        return {(str(g), str(s)) for g, s in await cur.fetchall()}

    async def _serve(self, client: aiomqtt.Client, ingest: Conn, backfill: Backfill) -> None:
        inbox = self._inbox
        assert inbox is not None

        async def watch_link() -> None:
            # what aiomqtt's message iterator would raise when the connection drops
            gone = client._disconnected  # aiomqtt has no public hook for this
            await asyncio.wait([gone])  # done, with the cause as its exception or none
            msg = "Disconnected during message iteration"
            raise aiomqtt.MqttError(msg) from (None if gone.cancelled() else gone.exception())

        async def until_stop() -> None:
            await self._stop.wait()
            with contextlib.suppress(TimeoutError):  # a commit stuck on a dead link: stop anyway
                await asyncio.wait_for(self._between_batches.wait(), STOP_GRACE_S)
            raise _Stopped

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(watch_link(), name="fleet-mqtt-link")
                tg.create_task(self._ingest(client, ingest, inbox, backfill), name="fleet-ingest")
                tg.create_task(self._backfill_loop(backfill), name="fleet-backfill")
                tg.create_task(self._progress_loop(backfill), name="fleet-progress")
                tg.create_task(until_stop(), name="fleet-stop")
        except* _Stopped:
            log.info("collector_stopping")
        finally:
            self._log_progress("collector_totals", backfill)

    async def _ingest(
        self, client: aiomqtt.Client, conn: Conn, inbox: Inbox, backfill: Backfill
    ) -> None:
        limit = self.config.batch_max
        inbox.full_at = limit
        inbox.full.clear()
        while True:
            await inbox.ready.wait()
            if inbox.size < limit:  # messages trickle: a short wait fills the batch
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(inbox.full.wait(), self.config.batch_wait_s)
            messages = inbox.take(limit)
            pending = _Pending()
            for message in messages:
                self._take(pending, message)
            self._between_batches.clear()
            try:
                await self._commit(client, conn, pending, backfill)
            finally:
                self._between_batches.set()

    def _take(self, pending: _Pending, message: Received) -> None:
        topic_bytes, payload, qos, mid = message
        pending.count += 1
        self.stats.messages += 1
        if qos > 0:
            pending.acks.append(mid)
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            topic = topic_bytes.decode(errors="replace")  # named in the error, never stored
        try:
            record = parse_message(topic, payload)
        except BadMessage as exc:
            self.stats.bad_messages += 1
            if self.stats.bad_messages & (self.stats.bad_messages - 1) == 0:  # 1, 2, 4, 8...
                log.warning("bad_message", error=str(exc), count=self.stats.bad_messages)
            return
        pending.batch.add(record)
        if isinstance(record, EventsResponse):
            pending.responses.append(record)

    async def _commit(
        self, client: aiomqtt.Client, conn: Conn, pending: _Pending, backfill: Backfill
    ) -> None:
        if len(pending.batch):
            result, refused = await store_batch_isolating(conn, pending.batch)
            for reason in refused:
                self.stats.bad_messages += 1
                log.warning("record_refused_by_postgres", error=reason)
            self.stats.events_inserted += result.events_inserted
            self.stats.events_duplicate += result.events_duplicate
            self._note_seqs(pending.batch)
        if pending.acks:  # one buffer of PUBACKs (what paho's ack(mid, 1) sends, each)
            packets = b"".join([PUBACK.pack(PUBACK_TYPE, 2, mid) for mid in pending.acks])
            client._client._packet_queue(PUBACK_TYPE, packets, 0, 1)
        self.stats.batches += 1
        for response in pending.responses:
            await backfill.on_response(response)

    def _note_seqs(self, batch: Batch) -> None:
        """Sessions whose seqs this collector saw leave a hole (or that a state or info says
        are ahead) are re-checked against the store by the backfill loop."""
        for record in batch.events:
            self._seen[(record.gateway, record.session)].add(record.seq)
        for key, high in batch.high_waters().items():
            seen = self._seen[key]
            ranges = seen.ranges
            if len(ranges) != 1 or ranges[0][1] < high or key not in self._checked:
                self._dirty.add(key)

    async def _backfill_loop(self, backfill: Backfill) -> None:
        while True:
            dirty, self._dirty = self._dirty, set()
            if dirty:
                for key, upto in (await backfill.refresh(dirty)).items():
                    self._checked.add(key)
                    if upto > 0:  # settled in the store: one range here, however they came
                        self._seen[key].add_range(1, upto)
            await backfill.tick()
            await asyncio.sleep(self.config.backfill_interval_s)

    async def _progress_loop(self, backfill: Backfill) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval_s)
            self._log_progress("collector_progress", backfill)

    def _log_progress(self, what: str, backfill: Backfill) -> None:
        log.info(
            what,
            messages=self.stats.messages,
            batches=self.stats.batches,
            events_inserted=self.stats.events_inserted,
            events_duplicate=self.stats.events_duplicate,
            bad_messages=self.stats.bad_messages,
            backfill_requests=backfill.stats.requests,
            backfill_pages=backfill.stats.pages,
            gaps_permanent=backfill.stats.permanent,
            requests_pending=len(backfill.pending),
        )


#: where the collector's broker password comes from (named in a refused login's error)
_PASSWORD_SOURCES = "[broker] password_file or INFUSIOND_FLEET_MQTT_PASSWORD"  # noqa: S105


class _Stopped(Exception):  # control flow: stop was asked
    pass
