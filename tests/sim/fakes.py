"""In-memory peers of the gateway for the fault simulator: pumps with device-side truth and a
broker the bridge talks to.

:class:`SimPump` is the device (what really runs: state, rate, alarms) plus the fault the link
or the firmware currently shows; :class:`SimDriver` speaks the driver contract of
``drivers/base.py`` to it: every write is pre-read, write, read-back, and reported ``applied``
(read-back matches), ``failed`` (refused, verified unchanged; or ``"not sent: ..."`` when the
pre-read fails) or ``uncertain`` (no answer, or a read-back that does not match); like the real
drivers, it never raises for a device fault, except under ``LinkFault.RAISE_AFTER_WRITE`` (a
driver bug the gate must still end as ``uncertain``). Every write that reaches the device is
logged with the command that caused it.

:class:`SimBroker` outlives gateway restarts (like a real broker with a persistent session):
it holds commands until a bridge is connected and records every result, event and retained
state the gateway emits. :class:`SimBridge` is the per-gateway connection to it, with the
interface the gateway uses from ``daemon.mqtt.bridge.MqttBridge``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from drivers.base import (
    AlarmCode,
    Capabilities,
    ConnectionState,
    Driver,
    Identity,
    PumpStatus,
    RunState,
    WriteOutcome,
    WriteResult,
)
from drivers.errors import DeviceTimeout, DriverError, FrameError
from tests.sim.adapter import IncomingCommand, JournalError, Topics, outbox_message

IO_S = 0.02  # virtual time of one exchange with a pump
TIMEOUT_S = 1.0  # what a silent pump costs the driver before it gives up
CAPS = Capabilities(
    min_rate_ml_h=Decimal("0.1"), max_rate_ml_h=Decimal(5000), resolution_ml_h=Decimal("0.01")
)


class LinkFault(enum.Enum):
    """What the pump (or the line to it) does wrong until healed."""

    NONE = "none"
    SILENT = "silent"  # no answer at all: every exchange times out
    GARBAGE = "garbage"  # answers that do not parse
    WRONG_UNIT = "wrong_unit"  # answers from another unit id / address
    PREREAD_FAILS = "preread_fails"  # reads work, a write's pre-read times out: nothing sent
    RAISE_AFTER_WRITE = "raise_after_write"  # a driver that raises after the write went out
    READBACK_LOST = "readback_lost"  # the write goes out, its read-back times out
    READBACK_MISMATCH = "readback_mismatch"  # the device runs another rate than written
    REFUSE = "refuse"  # the device refuses every write (not allowed in this state)


class CrashPoint(enum.Enum):
    """Where the next write stops the whole gateway process (the harness kills it there)."""

    BEFORE_WRITE = "before_write"  # before the pre-read: the gateway has not claimed it yet
    BEFORE_SEND = "before_send"  # after the gateway recorded the write as going out
    AFTER_WRITE = "after_write"


@dataclass(frozen=True)
class Write:
    """One write that reached the device."""

    at: float
    op: str  # set_rate | start | stop | pause
    rate: Decimal  # the device's rate after the write
    value: Decimal | None  # the rate the write asked for (set_rate only)
    command_id: str | None


@dataclass
class SimPump:
    """The device: the truth of what runs, whatever the gateway believes."""

    pump_id: str
    state: RunState
    rate: Decimal
    alarms: set[AlarmCode] = field(default_factory=set)
    fault: LinkFault = LinkFault.NONE
    crash_at: CrashPoint | None = None
    writes: list[Write] = field(default_factory=list)
    #: index of the front-panel change the current rate comes from (None: set by a write)
    panel_change: int | None = None
    #: called with every status handed to the gateway (the harness learns what it saw)
    on_seen: Callable[[SimPump, PumpStatus], None] | None = None
    #: called with every write that reaches the device
    on_write: Callable[[SimPump, Write], None] | None = None

    def status(self) -> PumpStatus:
        return PumpStatus(self.state, self.rate, frozenset(self.alarms), battery_pct=90)

    def front_panel(self, rate: Decimal, change: int) -> None:
        self.rate = rate
        self.panel_change = change

    def power_reset(self) -> None:
        self.state = RunState.STOPPED
        self.alarms = {AlarmCode.DEVICE_RESET}

    def raise_alarm(self, code: AlarmCode) -> None:
        self.state = RunState.ALARM
        self.alarms.add(code)

    def clear_alarms(self) -> None:
        self.alarms.clear()
        if self.state is RunState.ALARM:
            self.state = RunState.STOPPED


class SimDriver(Driver):
    """The driver contract over a :class:`SimPump` (see the module docstring)."""

    kind = "sim"

    def __init__(
        self,
        pump: SimPump,
        *,
        loop_time: Callable[[], float],
        command_of_task: Callable[[], str | None],
        on_crash_point: Callable[[], None],
    ) -> None:
        self.pump = pump
        self._time = loop_time
        self._command_of_task = command_of_task
        self._on_crash_point = on_crash_point
        self._connected = False

    @property
    def connection(self) -> ConnectionState:
        return ConnectionState.ONLINE if self._connected else ConnectionState.OFFLINE

    @property
    def capabilities(self) -> Capabilities:
        return CAPS

    async def _exchange(self, what: str) -> None:
        """One request/answer on the line, failing as the current fault says."""
        fault = self.pump.fault
        if fault is LinkFault.SILENT:
            await asyncio.sleep(TIMEOUT_S)
            raise DeviceTimeout(f"{self.pump.pump_id}: no answer to {what} in {TIMEOUT_S} s")
        await asyncio.sleep(IO_S)
        if fault is LinkFault.GARBAGE:
            raise FrameError(f"{self.pump.pump_id}: {what}: reply does not parse: b'\\x02?\\xff'")
        if fault is LinkFault.WRONG_UNIT:
            raise FrameError(f"{self.pump.pump_id}: {what}: reply from unit 7, expected 1")

    def _seen(self, status: PumpStatus) -> PumpStatus:
        if self.pump.on_seen is not None:
            self.pump.on_seen(self.pump, status)
        return status

    async def connect(self) -> None:
        await self._exchange("connect")
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    async def identity(self) -> Identity:
        await self._exchange("identity")
        return Identity("SIM-PUMP", self.pump.pump_id, "1.0")

    async def read_status(self) -> PumpStatus:
        await self._exchange("status")
        return self._seen(self.pump.status())

    async def set_rate(self, rate_ml_h: Decimal) -> WriteResult:
        return await self._write("set_rate", rate_ml_h)

    async def start(self) -> WriteResult:
        return await self._write("start", None)

    async def stop(self) -> WriteResult:
        return await self._write("stop", None)

    async def pause(self) -> WriteResult:
        return await self._write("pause", None)

    async def _crash_here(self, point: CrashPoint) -> None:
        if self.pump.crash_at is point:
            self.pump.crash_at = None
            self._on_crash_point()
            await asyncio.Event().wait()  # the process dies here: the harness cancels us

    async def _write(self, op: str, rate: Decimal | None) -> WriteResult:
        pump = self.pump
        await self._crash_here(CrashPoint.BEFORE_WRITE)
        try:  # the pre-read
            await self._exchange(f"{op} pre-read")
            if pump.fault is LinkFault.PREREAD_FAILS:
                await asyncio.sleep(TIMEOUT_S)
                raise DeviceTimeout(f"{pump.pump_id}: no answer to the pre-read")
        except DriverError as exc:
            return WriteResult(WriteOutcome.FAILED, detail=f"not sent: {op}: {exc}")
        if not await self.may_write(pump.status()):  # the gateway checks and records the write
            return WriteResult(WriteOutcome.FAILED, detail=f"not sent: {op}: not recorded")
        await self._crash_here(CrashPoint.BEFORE_SEND)
        before = pump.status()
        if pump.fault is LinkFault.REFUSE or not self._allowed(op, rate):
            await asyncio.sleep(IO_S)
            return WriteResult(
                WriteOutcome.FAILED, readback=self._seen(before), detail=f"{op} refused"
            )
        self._apply(op, rate)
        await self._crash_here(CrashPoint.AFTER_WRITE)
        if pump.fault is LinkFault.RAISE_AFTER_WRITE:
            raise DeviceTimeout(f"{pump.pump_id}: {op} written, then the link dropped")
        if pump.fault is LinkFault.READBACK_LOST:
            await asyncio.sleep(TIMEOUT_S)
            return WriteResult(WriteOutcome.UNCERTAIN, detail=f"{op} sent; read-back timed out")
        await asyncio.sleep(IO_S)
        after = self._seen(pump.status())
        if self._matches(op, rate, after):
            return WriteResult(WriteOutcome.APPLIED, readback=after, detail=op)
        return WriteResult(
            WriteOutcome.UNCERTAIN, readback=after, detail=f"{op}: read-back differs"
        )

    def _allowed(self, op: str, rate: Decimal | None) -> bool:
        pump = self.pump
        if op == "set_rate":
            return rate is not None and CAPS.min_rate_ml_h <= rate <= CAPS.max_rate_ml_h
        if op == "start":
            return pump.state is not RunState.ALARM and pump.rate >= CAPS.min_rate_ml_h
        return True

    def _apply(self, op: str, rate: Decimal | None) -> None:
        pump = self.pump
        if op == "set_rate" and rate is not None:
            quirk = Decimal("0.5") if pump.fault is LinkFault.READBACK_MISMATCH else Decimal(0)
            pump.rate = rate + quirk
            pump.panel_change = None
        elif op == "start":
            pump.state = RunState.INFUSING
            pump.alarms.discard(AlarmCode.DEVICE_RESET)
        elif op == "stop":
            pump.state = RunState.STOPPED if pump.state is not RunState.ALARM else pump.state
        elif op == "pause" and pump.state is not RunState.ALARM:
            pump.state = RunState.PAUSED
        write = Write(self._time(), op, pump.rate, rate, self._command_of_task())
        pump.writes.append(write)
        if pump.on_write is not None:
            pump.on_write(pump, write)

    @staticmethod
    def _matches(op: str, rate: Decimal | None, after: PumpStatus) -> bool:
        if op == "set_rate":
            return after.rate_ml_h == rate
        wanted = {"start": RunState.INFUSING, "stop": RunState.STOPPED, "pause": RunState.PAUSED}
        return after.state is wanted[op]


# -- the MQTT side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Emitted:
    """A payload the gateway handed to its bridge (``data`` of the envelope)."""

    at: float
    pump_id: str
    data: dict[str, Any]


@dataclass
class SimBroker:
    """Survives gateway restarts; ``up`` False is an outage (nothing flows either way)."""

    gateway_id: str
    up: bool = True
    results: list[Emitted] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    waiting: collections.deque[IncomingCommand] = field(default_factory=collections.deque)
    bridge: SimBridge | None = None
    on_result: Callable[[Emitted], None] | None = None

    def send_command(self, pump_id: str, body: dict[str, Any]) -> None:
        self.waiting.append(IncomingCommand(pump_id, json.dumps(body).encode(), False, None, None))
        self.poke()

    def set_up(self, up: bool) -> None:
        self.up = up
        self.poke()

    def poke(self) -> None:
        if self.bridge is not None:
            self.bridge.wake.set()


@dataclass
class SimBridgeStats:
    """What the gateway's metrics read of ``MqttBridge.stats``."""

    connections: int = 1


class SimBridge:
    """One gateway's connection to the :class:`SimBroker` (MqttBridge's gateway-facing API)."""

    def __init__(self, broker: SimBroker, outbox: Any, loop_time: Callable[[], float]) -> None:
        self.topics = Topics(broker.gateway_id)
        self._broker = broker
        self._outbox = outbox
        self._time = loop_time
        self._commands: asyncio.Queue[IncomingCommand] = asyncio.Queue()
        self._results: collections.deque[tuple[str, bytes]] = collections.deque()
        self._stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.stats = SimBridgeStats()
        broker.bridge = self

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self._broker.retained[topic] = payload

    def send_result(
        self,
        pump_id: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        emitted = Emitted(self._time(), pump_id, json.loads(payload)["data"])
        self._broker.results.append(emitted)
        if self._broker.on_result is not None:
            self._broker.on_result(emitted)
        self._results.append((pump_id, payload))
        self.wake.set()

    async def commands(self) -> AsyncIterator[IncomingCommand]:
        while True:
            yield await self._commands.get()

    async def library_requests(self) -> AsyncIterator[IncomingCommand]:
        """No library pushes in the simulated ward (waits until cancelled)."""
        await self._stop.wait()
        await asyncio.Event().wait()
        yield IncomingCommand("", b"", retain=False, response_topic=None, correlation_data=None)

    def send_library_response(self, payload: bytes, **_props: object) -> None:
        """Never called: no library pushes in the simulated ward."""

    async def events_requests(self) -> AsyncIterator[IncomingCommand]:
        """No fleet collector in the simulated ward (waits until cancelled)."""
        await self._stop.wait()
        await asyncio.Event().wait()
        yield IncomingCommand("", b"", retain=False, response_topic=None, correlation_data=None)

    def send_events_response(self, payload: bytes) -> None:
        """Never called: no fleet collector in the simulated ward."""

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            if self._broker.up:
                while self._broker.waiting:
                    self._commands.put_nowait(self._broker.waiting.popleft())
                self._results.clear()
                if self._outbox.outbox_changed.is_set():
                    self._outbox.outbox_changed.clear()
                    await self._flush_outbox()
            self.wake.clear()
            try:
                async with asyncio.timeout(0.5):
                    await self.wake.wait()
            except TimeoutError:
                pass
        if self._broker.bridge is self:
            self._broker.bridge = None

    async def _flush_outbox(self) -> None:
        try:
            pending = await self._outbox.outbox_pending(1000)
            session = self._outbox.session
            self._broker.events.extend(
                json.loads(outbox_message(item, topics=self.topics, session=session)[1])["data"]
                for item in pending
            )
            await self._outbox.outbox_ack([item.seq for item in pending])
        except JournalError:
            self._outbox.outbox_changed.set()  # retry at the next wake, as the real bridge does
