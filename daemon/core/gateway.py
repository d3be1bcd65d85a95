"""The gateway: builds every part from a :class:`Config` and supervises them.

One ``asyncio.TaskGroup`` holds named tasks: the MQTT bridge, one supervised task per pump
channel (a crashing channel is restarted with capped backoff and reported; it never takes the
others down), one per vitals source plus the vitals publisher, the command dispatcher and the
systemd notifier (``READY=1`` once every pump has been polled once, ``WATCHDOG=1`` only while
every channel loop is making progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from importlib.metadata import version as package_version

import structlog

from daemon.base.config import Config
from daemon.base.config_sections import PumpConfig
from daemon.base.envelope import Kind, encode, envelope
from daemon.base.events import PumpEvent
from daemon.base.payload import JsonObject
from daemon.base.quantities import optional_json
from daemon.base.results import CommandResult
from daemon.core.bridge_info import bridge_info
from daemon.core.channel import Channel
from daemon.core.channel_types import ChannelConfig, PollReport
from daemon.core.gate import Control, Gate, ReplyTo
from daemon.core.gateway_library import LibraryHotReload, library_uses
from daemon.core.gateway_piv import piv_listener
from daemon.core.gateway_vitals import VitalsIntake
from daemon.core.parts import (
    configured_program,
    library_path,
    load_checked_library,
    make_driver,
    mqtt_bridge,
)
from daemon.core.program import dose_at
from daemon.core.recovery import recover_pumps
from daemon.core.sdnotify import Notifier
from daemon.ihe import outbound as ihe_outbound
from daemon.ihe.piv import PivListener
from daemon.journal.history import History
from daemon.journal.records import JournalError
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal
from daemon.mqtt import discovery, events_request
from daemon.mqtt.availability import Availability
from daemon.mqtt.bridge import MqttBridge
from daemon.mqtt.health import publish_health, sample_metrics
from daemon.mqtt.metrics import GatewayMetrics, Sources
from daemon.mqtt.signing import SignaturePolicy
from daemon.pharmacy.reload import (
    LibraryPolicy,
    LibraryReloader,
)
from drivers.backoff import Backoff
from drivers.base import Driver
from drivers.clock import utc_now
from protocol.library import Library

log = structlog.get_logger("infusiond.gateway")

#: a channel that made no progress for this long (beyond its poll period) stops the watchdog
STALL_GRACE_S = 15.0
#: how often retention prunes the journal (and once at start)
PRUNE_EVERY_S = 3600.0


@dataclass
class Gateway:
    """Everything one ``infusiond run`` owns. Use :meth:`run` inside ``asyncio.run``."""

    config: Config
    driver_factory: Callable[[PumpConfig], Driver] = make_driver
    notifier: Notifier = field(default_factory=Notifier)
    #: seams for tests: the MQTT side and the wall clock (payload times, rules, expiry)
    bridge_factory: Callable[[Config, AsyncJournal], MqttBridge] = mqtt_bridge
    clock: Callable[[], datetime] = utc_now
    library: Library = field(init=False)
    journal: AsyncJournal = field(init=False)
    bridge: MqttBridge = field(init=False)
    gate: Gate = field(init=False)
    channels: dict[str, Channel] = field(default_factory=dict, init=False)
    #: the vitals sources, their boards and listeners (made in :meth:`_build`)
    vitals: VitalsIntake = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    #: IHE PCD DEC/IPEC/ACM to the EHR (``[hl7_out]``), None when not configured
    hl7_out: ihe_outbound.Hl7Out | None = field(default=None, init=False)
    #: IHE PCD PIV orders in (``[piv]``), None when not configured
    piv: PivListener | None = field(default=None, init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    reloader: LibraryReloader = field(init=False)
    #: library reloads on SIGHUP and pushes (made in :meth:`_build`)
    library_reload: LibraryHotReload = field(init=False)
    #: Prometheus figures (``metrics.registry``, served at GET /metrics) and bridge/health's
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics, init=False)
    #: per-pump ``pump/<id>/availability`` (made in :meth:`_build`)
    availability: Availability = field(init=False)
    _started_at: datetime = field(default_factory=utc_now, init=False)

    # -- the Hub the channels talk to --------------------------------------------------------

    def now(self) -> datetime:
        """Wall-clock time for payloads and rules (UTC)."""
        return self.clock()

    async def emit_event(self, pump_id: str, event: PumpEvent) -> None:
        """Journal the event with the next seq and queue it (the bridge publishes it)."""
        await self.journal.record_event(pump_id, event)

    async def emit_events(self, pump_id: str, events: list[PumpEvent]) -> None:
        """Journal the events (one transaction, consecutive seqs) and queue them."""
        await self.journal.record_events(pump_id, events)

    async def publish_state(self, pump_id: str, data: JsonObject) -> None:
        """Publish the retained ``pump.state`` (``data`` is its payload, built by the channel)."""
        if self.hl7_out is not None:
            self.hl7_out.pump_state(pump_id, data)
        self._publish_retained(self.bridge.topics.pump_state(pump_id), Kind.PUMP_STATE, data)
        self.availability.update(pump_id, data.get("connection"))

    def _publish_retained(self, topic: str, kind: Kind, data: JsonObject) -> None:
        body = envelope(
            kind,
            gateway=self.config.gateway_id,
            session=self.journal.session,
            seq=self.journal.seq,
            ts=self.clock(),
            data=data,
        )
        self.bridge.publish_retained(topic, encode(body))

    async def _send_result(
        self, pump_id: str, result: CommandResult, reply: ReplyTo | None
    ) -> None:
        data = result.to_json()  # the result as published
        self.metrics.command_result(result)
        body = envelope(
            Kind.PUMP_COMMAND_RESULT,
            gateway=self.config.gateway_id,
            session=self.journal.session,
            seq=self.journal.seq,
            ts=self.clock(),
            data=data,
        )
        self.bridge.send_result(
            pump_id,
            encode(body),
            response_topic=reply.response_topic if reply else None,
            correlation_data=reply.correlation_data if reply else None,
        )

    # -- what the HTTP API reads ---------------------------------------------------------------

    def history(self) -> History:
        """The history the HTTP API serves from this gateway's journal (answers "not ready"
        until :meth:`run` has opened it, and again once it is closed)."""

        def journal() -> AsyncJournal | None:
            opened: AsyncJournal | None = self.__dict__.get("journal")
            return opened if opened is not None and not opened.closed else None

        def dose_obj(pump_id: str, rate_ml_h: float) -> JsonObject | None:
            channel = self.channels.get(pump_id)
            return (
                None
                if channel is None
                else optional_json(channel.dose_obj(Decimal(str(rate_ml_h))))
            )

        pumps = tuple(p.id for p in self.config.pumps)
        return History(self.config.gateway_id, journal, lambda: pumps, dose_obj)

    # -- building ------------------------------------------------------------------------------

    async def _build(self) -> None:
        cfg = self.config
        self.library = load_checked_library(cfg)
        programs = [configured_program(p, self.library, i) for i, p in enumerate(cfg.pumps)]
        self.journal = await AsyncJournal.open(
            cfg.data_dir, gateway_id=cfg.gateway_id, retention_days=cfg.journal.retention_days
        )
        self.bridge = self.bridge_factory(cfg, self.journal)
        self.hl7_out = ihe_outbound.from_config(cfg, self.journal, self.clock)
        if self.hl7_out is not None:
            await self.hl7_out.prepare()
        self.vitals = VitalsIntake(
            cfg.vitals,
            lambda bed, data: self._publish_retained(
                self.bridge.topics.vitals_state(bed), Kind.VITALS_STATE, data
            ),
            self.clock,
            self.hl7_out,
        )
        self.gate = Gate(
            library=self.library,
            channels=self.channels,
            journal=self.journal,
            send_result=self._send_result,
            now=self.clock,
            vitals_for=self.vitals.vitals_for,
            control=Control(
                cfg.control.enabled,
                frozenset(cfg.control.allowlist),
                SignaturePolicy.from_config(
                    cfg.control.keys, require=cfg.control.require_signature
                ),
            ),
        )
        self.reloader = LibraryReloader(
            policy=LibraryPolicy.from_config(cfg.library),
            journal=self.journal,
            current=lambda: self.library,
            install=self._install_library,
            uses=lambda: library_uses(self.channels),
            now=self.clock,
        )
        self.library_reload = LibraryHotReload(
            self.reloader,
            library_path(cfg),
            self.journal,
            self.bridge,
            cfg.gateway_id,
            self.clock,
        )
        if cfg.piv is not None:
            self.piv = piv_listener(cfg.piv, self.gate, self.channels, self.clock)
        for pump, program in zip(cfg.pumps, programs, strict=True):
            self.channels[pump.id] = Channel(
                pump_id=pump.id,
                driver=self.driver_factory(pump),
                program=program,
                hub=self,
                dose_at=dose_at,
                observe=self.gate.observe,
                config=ChannelConfig(
                    poll_period_s=pump.poll_period_s,
                    publish_every_s=pump.publish_every_s,
                    watchdog_s=pump.watchdog_s or 0,
                ),
            )
            self.channels[pump.id].on_poll = self._count_poll
        self.availability = Availability(
            self.bridge.topics.pump_availability, self.bridge.publish_retained
        )
        self.metrics.sources = Sources(
            now=self.clock,
            last_polls=lambda: {pid: ch.last_poll for pid, ch in self.channels.items()},
            broker_connections=lambda: self.bridge.stats.connections,
            journal_footprint=lambda: self.journal.run(Journal.footprint),
        )

    def _install_library(self, library: Library) -> None:
        """The swap: one assignment each, between two commands (the loop is single-threaded);
        then ``bridge/info`` names the new library."""
        self.library = library
        self.gate.library = library
        self._publish_bridge_info()

    def _count_poll(self, report: PollReport) -> None:
        self.metrics.poll(report.pump_id, ok=report.answered, late_s=report.late_s)

    def _publish_health(self, data: JsonObject) -> None:
        self._publish_retained(self.bridge.topics.bridge_health, Kind.BRIDGE_HEALTH, data)

    async def _publish_discovery(self) -> None:
        """Home Assistant discovery configs (daemon/mqtt/discovery.py)."""
        cfg = self.config
        await discovery.publish(
            self.bridge.publish_retained,
            self.bridge.topics,
            cfg.discovery,
            data_dir=cfg.data_dir,
            version=package_version("infusiond"),
            pumps=[
                discovery.PumpInfo(pid, ch.program.drug, ch.program.dose_unit, ch.driver.kind)
                for pid, ch in self.channels.items()
            ],
            beds=[v.bed for v in cfg.vitals],
        )

    async def _recover(self) -> None:
        """Rebuild each pump's truth from the journal before anything runs: its program (the
        configuration only seeds a pump the journal has never seen), its last known rate and
        the writes a crash interrupted (so a change made while the daemon was down is reported,
        and attributed), and its recent dose changes (so the time-window rules hold across a
        restart). Commands interrupted by the crash are loaded for reconciliation; their pumps
        answer ``busy`` until settled."""
        await self.gate.load_interrupted()
        await recover_pumps(self.journal, self.channels, self.clock())

    def _publish_bridge_info(self) -> None:
        data = bridge_info(
            self.config,
            session=self.journal.session,
            started_at=self._started_at,
            library=self.library,
            programs={pid: ch.program for pid, ch in self.channels.items()},
        )
        self._publish_retained(self.bridge.topics.bridge_info, Kind.BRIDGE_INFO, data)

    async def _serve_events_requests(self) -> None:
        """Answer fleet collectors' backfill requests from the journal (daemon/events_request)."""
        async for incoming in self.bridge.events_requests():
            try:
                data = await events_request.answer(
                    incoming.payload,
                    retained=incoming.retain,
                    source=self.journal,
                    gateway=self.config.gateway_id,
                )
            except JournalError as exc:  # the collector asks again later
                log.warning("events_request_unanswered", error=str(exc))
                continue
            self.bridge.send_events_response(
                events_request.response_body(
                    data, gateway=self.config.gateway_id, source=self.journal, ts=self.clock()
                )
            )

    # -- running -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly."""
        self._stop.set()

    async def run(self) -> None:
        """Build, run until :meth:`stop` (or cancellation), then shut down cleanly."""
        await self._build()
        await self._recover()
        await self.library_reload.journal_programs()
        try:
            if self.piv is not None:
                await self.piv.start()
            async with asyncio.TaskGroup() as tg:
                # the bridge survives every peer fault itself; a bug in it is restarted too
                bridge_task = tg.create_task(
                    self._supervise("mqtt-bridge", self.bridge.run), name="mqtt-bridge"
                )
                self._publish_bridge_info()
                workers: list[asyncio.Task[None]] = [
                    tg.create_task(self._supervise(f"channel:{pid}", ch.run), name=f"channel:{pid}")
                    for pid, ch in self.channels.items()
                ]
                workers.extend(
                    tg.create_task(self.vitals.run_source(source), name=f"vitals:{source.bed}")
                    for source in self.config.vitals
                )
                workers.append(tg.create_task(self._dispatch_commands(), name="commands"))
                workers.append(
                    tg.create_task(self.gate.reconcile_interrupted(), name="reconcile-commands")
                )
                workers.append(tg.create_task(self._notify_systemd(), name="sd-notify"))
                await self._publish_discovery()
                workers.append(
                    tg.create_task(
                        publish_health(
                            self.metrics, self._publish_health, self.config.health.publish_every_s
                        ),
                        name="bridge-health",
                    )
                )
                workers.append(tg.create_task(sample_metrics(self.metrics), name="metrics-sample"))
                workers.append(tg.create_task(self._prune_journal(), name="journal-retention"))
                workers.append(
                    tg.create_task(self.library_reload.reload_on_request(), name="library-reload")
                )
                workers.append(
                    tg.create_task(self.library_reload.serve_pushes(), name="library-requests")
                )
                workers.append(
                    tg.create_task(self._serve_events_requests(), name="events-requests")
                )
                self._install_sighup()
                if self.hl7_out is not None:
                    workers.append(
                        tg.create_task(self._supervise("hl7-out", self.hl7_out.run), name="hl7-out")
                    )
                await self._stop.wait()
                log.info("gateway_stopping")
                self.notifier.notify(STOPPING="1")
                for channel in self.channels.values():
                    channel.stop()
                for task in workers:
                    task.cancel()
                await self.gate.drain()
                self.bridge.stop()
                await bridge_task
        finally:
            if threading.current_thread() is threading.main_thread():
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            for channel in self.channels.values():
                with contextlib.suppress(Exception):
                    await channel.driver.close()
            for listener in self.vitals.listeners:
                await listener.close()
            if self.piv is not None:
                await self.piv.close()
            await self.journal.aclose()
            self.notifier.close()

    def _install_sighup(self) -> bool:
        """SIGHUP re-reads the library (only the main thread may own signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, self.library_reload.request_reload
        )
        return True

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` forever; restart it with capped backoff if it crashes."""
        backoff = Backoff(initial_s=0.5, maximum_s=30.0)
        while True:
            started = time.monotonic()
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor is the one place that catches everything
                log.exception("task_crashed", task=name)
            else:
                return
            if time.monotonic() - started > 60:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _prune_journal(self) -> None:
        """Apply the journal's retention at start and then every hour, in bounded steps (each
        its own short transaction, so commands are never held up for long). A journal that
        cannot be written now is tried again at the next round; it never stops the gateway."""
        while True:
            more = True
            try:
                while more:
                    more = (await self.journal.run(Journal.prune, self.clock())).more
            except JournalError as exc:
                log.warning("journal_prune_failed", error=str(exc))
            await asyncio.sleep(PRUNE_EVERY_S)

    async def _dispatch_commands(self) -> None:
        async for incoming in self.bridge.commands():
            reply = (
                ReplyTo(incoming.response_topic, incoming.correlation_data)
                if incoming.response_topic
                else None
            )
            self.gate.submit(
                incoming.pump_id, incoming.payload, retained=incoming.retain, reply=reply
            )

    async def _notify_systemd(self) -> None:
        await asyncio.gather(
            self.vitals.bound.wait(), *(c.first_poll_done.wait() for c in self.channels.values())
        )
        self.ready.set()
        self.notifier.notify(READY="1", STATUS=f"{len(self.channels)} pump(s) polled")
        log.info("gateway_ready", pumps=len(self.channels))
        # Everything built so far (modules, library, channels) lives as long as the process:
        # keep it out of later collections, whose full passes otherwise stall every channel
        # (docs/performance.md). Collect first so that no start-up garbage is frozen with it.
        gc.collect()
        gc.freeze()
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            if self._channels_alive():
                self.notifier.notify(WATCHDOG="1")
            else:
                log.warning("watchdog_withheld", reason="a channel loop is not making progress")
            await asyncio.sleep(interval)

    def _channels_alive(self) -> bool:
        now = time.monotonic()
        return all(
            now - c.last_progress <= c.config.poll_period_s + STALL_GRACE_S
            for c in self.channels.values()
        )
