"""A simulated patient monitor: sends HL7 ORU^R01 over MLLP every few seconds, checks the ACKs.

Usable in-process (the demo runs it in the daemon's event loop)::

    monitor = Monitor(model, dose_source=lambda: Doses(0.05, 0.03), bed="bed-1",
                      clock=SimClock(speed=60))
    await monitor.run("tcp://127.0.0.1:2575")      # connect to the daemon's listener
    await monitor.serve("tcp://127.0.0.1:2576")    # or listen; a daemon in client mode dials in

The patient model advances on the (possibly accelerated) simulated clock; message timestamps
are wall-clock time, because the gateway judges staleness against its own clock. ``interval_s``
is wall-clock seconds between messages. Messages are built with the driver's own
:func:`drivers.hl7.build_oru`, so the simulator and the driver share one code table.

Faults (one-shot; queued by CLI flag, scenario file or :meth:`Monitor.inject` at run time):
``drop-connection`` (close right after sending, before the ACK), ``garbled`` (a non-numeric
MAP value; AE expected), ``missing-obx`` (an ORU without OBX; AE expected), ``stale-timestamps``
(observation times one hour old; AA expected, the gateway marks the values stale),
``future-timestamps`` (observation times five minutes ahead, as a monitor with a wrong clock or
a spoofer sends them; AE expected, the gateway refuses more than 60 s of skew) and
``truncated`` (half a frame, then the next message; the gateway resynchronises, no ACK).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import structlog

from drivers.backoff import Backoff
from drivers.clock import utc_now
from drivers.hl7 import (
    Ack,
    AckCode,
    MessageError,
    MllpDecoder,
    MllpFrame,
    Parameter,
    build_oru,
    parse_ack,
    parse_tcp_url,
)
from sim_devices.clock import SimClock
from sim_devices.patient_model import Doses, PatientModel, VitalsReading

log = structlog.get_logger(__name__)

STALE_AGE = timedelta(hours=1)
FUTURE_SKEW = timedelta(minutes=5)


class MonitorFault(enum.Enum):
    """Faults the simulated monitor can inject (public CLI/scenario names)."""

    DROP_CONNECTION = "drop-connection"
    GARBLED = "garbled"
    MISSING_OBX = "missing-obx"
    STALE_TIMESTAMPS = "stale-timestamps"
    FUTURE_TIMESTAMPS = "future-timestamps"
    TRUNCATED = "truncated"

    @classmethod
    def parse(cls, name: str) -> MonitorFault:
        """By public name; ValueError lists the known ones."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown monitor fault {name!r}; known: {known}") from None


@dataclass
class MonitorStats:
    """What the monitor sent and how it was acknowledged."""

    sent: int = 0
    aa: int = 0
    ae: int = 0
    unexpected: int = 0  # ACK code differs from what the message deserved
    ack_mismatch: int = 0  # MSA-2 does not name the message sent
    no_ack: int = 0  # timed out, or the ACK was unreadable
    connections: int = 0


@dataclass(frozen=True, slots=True)
class AckResult:
    """One acknowledged message: what was sent, what came back, what was expected."""

    control_id: str
    ack: Ack
    expected: AckCode
    fault: MonitorFault | None

    @property
    def as_expected(self) -> bool:
        """True when the code matches and MSA-2 names the message."""
        return self.ack.code is self.expected and self.ack.control_id in ("", self.control_id)


class _AckReader:
    """Reads ACK frames from a stream with the shared capped decoder."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._decoder = MllpDecoder(max_frame=16 * 1024)
        self._frames: deque[bytes] = deque()

    async def next(self) -> bytes:
        while not self._frames:
            chunk = await self._reader.read(4096)
            if not chunk:
                raise ConnectionResetError("connection closed while waiting for an ACK")
            self._frames.extend(
                f.payload for f in self._decoder.feed(chunk) if isinstance(f, MllpFrame)
            )
        return self._frames.popleft()


class Monitor:
    """Simulated bedside monitor for one bed."""

    def __init__(
        self,
        model: PatientModel,
        *,
        dose_source: Callable[[], Doses],
        bed: str = "bed-1",
        patient_id: str = "demo-patient",
        clock: SimClock | None = None,
        interval_s: float = 2.0,
        wall_clock: Callable[[], datetime] = utc_now,
        coding: str = "MDC",
        ack_timeout_s: float = 5.0,
        faults: Iterable[MonitorFault] = (),
        scheduled_faults: Sequence[tuple[float, MonitorFault]] = (),
        backoff: Backoff | None = None,
        on_ack: Callable[[AckResult], None] | None = None,
        sending_application: str = "INFUSIOND-SIM",
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if coding not in ("MDC", "LN"):
            raise ValueError(f"coding must be 'MDC' or 'LN', got {coding!r}")
        self.model = model
        self.dose_source = dose_source
        self.bed = bed
        self.patient_id = patient_id
        self.clock = clock or SimClock()
        self.interval_s = interval_s
        self.wall_clock = wall_clock
        self.coding = coding
        self.ack_timeout_s = ack_timeout_s
        self.backoff = backoff or Backoff(initial_s=0.5, maximum_s=10.0)
        self.on_ack = on_ack
        self.sending_application = sending_application
        self.stats = MonitorStats()
        self.last_reading: VitalsReading | None = None
        self.listening = asyncio.Event()
        self.port: int | None = None
        self._pending: deque[MonitorFault] = deque(faults)
        self._scheduled = sorted(scheduled_faults, key=lambda f: f[0])
        self._ids = itertools.count(1)

    def inject(self, fault: MonitorFault) -> None:
        """Apply ``fault`` to the next message."""
        self._pending.append(fault)

    def _next_fault(self) -> MonitorFault | None:
        now = self.clock.now()
        while self._scheduled and self._scheduled[0][0] <= now:
            self._pending.append(self._scheduled.pop(0)[1])
        return self._pending.popleft() if self._pending else None

    def next_message(self, fault: MonitorFault | None = None) -> tuple[str, bytes, AckCode]:
        """Advance the patient and build the next message: (control id, payload, expected)."""
        reading = self.model.advance(self.clock.now(), self.dose_source())
        self.last_reading = reading
        sent_at = self.wall_clock()
        at = sent_at
        if fault is MonitorFault.STALE_TIMESTAMPS:
            at = sent_at - STALE_AGE
        elif fault is MonitorFault.FUTURE_TIMESTAMPS:
            at = sent_at + FUTURE_SKEW
        values: dict[Parameter, tuple[Decimal, datetime]] = {}
        if fault is not MonitorFault.MISSING_OBX:
            values = {
                Parameter.MAP: (_whole(reading.map), at),
                Parameter.SBP: (_whole(reading.sbp), at),
                Parameter.DBP: (_whole(reading.dbp), at),
                Parameter.HR: (_whole(reading.hr), at),
                Parameter.SPO2: (_whole(reading.spo2), at),
            }
        control_id = f"{self.bed}-{next(self._ids)}"
        payload = build_oru(
            control_id=control_id,
            sent_at=sent_at,
            values=values,
            bed=self.bed,
            patient_id=self.patient_id,
            sending_application=self.sending_application,
            coding=self.coding,
        )
        expected = AckCode.AA
        if fault is MonitorFault.GARBLED:
            k = list(values).index(Parameter.MAP) + 1  # MAP's OBX-4 containment is 1.1.1.k
            payload = payload.replace(
                f"|1.1.1.{k}|{values[Parameter.MAP][0]}|".encode(), f"|1.1.1.{k}|7#?4|".encode(), 1
            )
            expected = AckCode.AE
        elif fault in (MonitorFault.MISSING_OBX, MonitorFault.FUTURE_TIMESTAMPS):
            expected = AckCode.AE
        return control_id, payload, expected

    async def run(self, to_url: str) -> None:
        """Connect to ``to_url`` (``tcp://host:port``) and send until cancelled; reconnects."""
        host, port = parse_tcp_url(to_url)
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that stops the monitor when it lands as the connect completes
                async with asyncio.timeout(self.ack_timeout_s):
                    reader, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                delay = self.backoff.next_delay()
                log.warning("monitor.connect_failed", url=to_url, error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            await self._session(reader, writer)
            await asyncio.sleep(self.backoff.next_delay())

    async def serve(self, listen_url: str) -> None:
        """Listen on ``listen_url``; every connecting gateway gets the message stream."""
        host, port = parse_tcp_url(listen_url)
        server = await asyncio.start_server(self._session, host, port)
        self.port = int(server.sockets[0].getsockname()[1])
        self.listening.set()
        log.info("monitor.listening", host=host, port=self.port)
        async with server:
            await server.serve_forever()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send messages on one connection until it fails or a fault drops it."""
        self.stats.connections += 1
        acks = _AckReader(reader)
        try:
            while True:
                if not await self._exchange(acks, writer):
                    break
                await asyncio.sleep(self.interval_s)  # the sending period, not a sync wait
        except (OSError, ConnectionError) as exc:
            log.warning("monitor.connection_lost", error=str(exc))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                log.debug("monitor.close_failed")

    async def _exchange(self, acks: _AckReader, writer: asyncio.StreamWriter) -> bool:
        """Send one message and check its ACK; False when the connection should end."""
        fault = self._next_fault()
        control_id, payload, expected = self.next_message(fault)
        frame = MllpFrame(payload).serialize()
        if fault is MonitorFault.TRUNCATED:
            writer.write(frame[: len(frame) // 2])
            log.info("monitor.fault", fault=fault.value, control_id=control_id)
            return True
        writer.write(frame)
        await writer.drain()
        self.stats.sent += 1
        if fault is MonitorFault.DROP_CONNECTION:
            log.info("monitor.fault", fault=fault.value, control_id=control_id)
            return False
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                raw = await acks.next()
            ack = parse_ack(raw)
        except TimeoutError:
            self.stats.no_ack += 1
            log.warning("monitor.no_ack", control_id=control_id, timeout_s=self.ack_timeout_s)
            return False
        except MessageError as exc:
            self.stats.no_ack += 1
            log.warning("monitor.bad_ack", control_id=control_id, error=str(exc))
            return True
        self._record(AckResult(control_id, ack, expected, fault))
        return True

    def _record(self, result: AckResult) -> None:
        ack = result.ack
        if ack.code is AckCode.AA:
            self.stats.aa += 1
        else:
            self.stats.ae += 1
        if ack.code is not result.expected:
            self.stats.unexpected += 1
        if ack.control_id not in ("", result.control_id):
            self.stats.ack_mismatch += 1
        reading = self.last_reading
        log.info(
            "monitor.ack",
            control_id=result.control_id,
            ack=ack.code.value,
            expected=result.expected.value,
            text=ack.text or None,
            fault=result.fault.value if result.fault else None,
            **(
                {
                    "map": round(reading.map),
                    "sbp": round(reading.sbp),
                    "dbp": round(reading.dbp),
                    "hr": round(reading.hr),
                    "spo2": round(reading.spo2),
                }
                if reading
                else {}
            ),
        )
        if self.on_ack is not None:
            self.on_ack(result)


def _whole(value: float) -> Decimal:
    """Monitors display whole numbers for pressures, rates and saturation."""
    return Decimal(round(value))
