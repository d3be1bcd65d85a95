"""One MLLP connection that receives ORU^R01 messages and acknowledges each (AA or AE).

Shared by the listener (the daemon accepts monitor connections) and the client (the daemon
connects to a monitor gateway). A callback protocol, not a task per connection: each frame is
parsed, handed to ``on_sample`` and acknowledged before the next one is read. When the peer
does not read its ACKs the transport's write buffer fills and reading pauses, so memory stays
bounded; the decoder caps the bytes held for one message.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from drivers.clock import Now, utc_now
from drivers.hl7.ack import build_ack, peek_header
from drivers.hl7.codes import CodeTables
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.mllp import DEFAULT_MAX_FRAME, Discarded, DiscardReason, MllpDecoder, MllpFrame
from drivers.hl7.oru import DEFAULT_MAX_FUTURE_S, parse_oru
from drivers.hl7.sample import VitalsSample

log = structlog.get_logger(__name__)

SampleCallback = Callable[[VitalsSample], None]


@dataclass
class ReceiverStats:
    """Counters over every connection of one listener or client."""

    connections: int = 0
    messages: int = 0
    accepted: int = 0  # answered AA
    errors: int = 0  # answered AE
    discarded_bytes: int = 0
    evicted: int = 0  # idle peers closed to make room for a new connection


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What every connection of one listener/client shares.

    ``on_sample`` runs in the event loop before the AA is sent; it must be quick and must not
    raise (an exception closes that one connection, never the listener). ``now`` is the
    gateway's clock (injectable): read once per message, it stamps the ACK, becomes the
    sample's ``received_at`` and is the reference for refusing observation times more than
    ``max_future_s`` ahead. ``idle_timeout_s`` closes a connection that has not completed a
    frame for that long: bytes trickled without ever finishing a message do not keep it open
    (such a peer would otherwise hold one of the listener's slots forever); None disables it.
    """

    on_sample: SampleCallback
    now: Now = utc_now
    max_frame: int = DEFAULT_MAX_FRAME
    tables: CodeTables | None = None
    application: str = "INFUSIOND"
    facility: str = "GATEWAY"
    idle_timeout_s: float | None = 300.0
    max_future_s: float = DEFAULT_MAX_FUTURE_S

    def __post_init__(self) -> None:
        if not self.max_future_s >= 0:
            raise ValueError(f"max_future_s must be >= 0, got {self.max_future_s}")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {self.idle_timeout_s}")


class _AckIds:
    """ACK control ids: a per-process random prefix and a counter (unique, no clock read)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:8].upper()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):010d}"


_ACK_IDS = _AckIds()
_SERIALS = itertools.count()


class MllpReceiverProtocol(asyncio.Protocol):
    """Decode frames, parse ORU^R01, call back, acknowledge. Never raises on input."""

    def __init__(
        self,
        config: ReceiverConfig,
        stats: ReceiverStats,
        on_lost: Callable[[MllpReceiverProtocol, Exception | None], None] | None = None,
    ) -> None:
        self._config = config
        self._stats = stats
        self._on_lost = on_lost
        self._decoder = MllpDecoder(config.max_frame)
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.peer = "?"
        #: event-loop time of the last complete frame (of the connection until the first)
        self.last_frame_at = asyncio.get_running_loop().time()
        self._closed = False
        #: complete frames received on this connection
        self.frames = 0
        #: creation order (breaks ties between peers idle since the same instant)
        self.serial = next(_SERIALS)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # stream sockets only
        self._transport = transport
        if self._closed:  # closed (evicted) before the connection was even made
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._stats.connections += 1
        self.last_frame_at = asyncio.get_running_loop().time()
        log.info("hl7.connection_made", peer=self.peer)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        timeout = self._config.idle_timeout_s
        if timeout is not None and self._transport is not None:
            self._idle = asyncio.get_running_loop().call_later(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        log.warning(
            "hl7.idle_timeout",
            peer=self.peer,
            timeout_s=self._config.idle_timeout_s,
            frames=self.frames,
            buffered=self._decoder.buffered,
        )
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        log.info("hl7.connection_lost", peer=self.peer, error=str(exc) if exc else None)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._transport = None
        if self._on_lost is not None:
            self._on_lost(self, exc)

    def close(self) -> None:
        """Close this connection (idempotent; also before the connection is made)."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, MllpFrame):
                self.last_frame_at = asyncio.get_running_loop().time()
                self.frames += 1
                self._arm_idle_timer()  # only a complete frame counts as activity
                self._handle(item.payload)
            else:
                self._discarded(item)

    def _discarded(self, item: Discarded) -> None:
        self._stats.discarded_bytes += item.size
        log.warning("hl7.discarded", peer=self.peer, reason=item.reason.value, size=item.size)
        if item.reason is DiscardReason.TOO_LONG:
            error = MessageError(
                f"message exceeds {self._config.max_frame} bytes; discarded",
                code=Hl7ErrorCode.APPLICATION_ERROR,
            )
            self._stats.messages += 1
            self._answer(b"", error, self._config.now())

    def _handle(self, payload: bytes) -> None:
        self._stats.messages += 1
        now = self._config.now()
        try:
            sample = parse_oru(
                payload,
                now=now,
                tables=self._config.tables,
                max_future_s=self._config.max_future_s,
            )
        except MessageError as exc:
            self._answer(payload, exc, now)
            return
        self._config.on_sample(sample)
        self._answer(payload, None, now)

    def _answer(self, payload: bytes, error: MessageError | None, now: datetime) -> None:
        header = peek_header(payload)
        if error is None:
            self._stats.accepted += 1
            log.debug("hl7.aa", peer=self.peer, control_id=header.control_id)
        else:
            self._stats.errors += 1
            log.warning(
                "hl7.ae",
                peer=self.peer,
                control_id=header.control_id,
                error=error.text,
                location=error.location,
            )
        ack = build_ack(
            header,
            now=now,
            ack_control_id=_ACK_IDS.next(),
            error=error,
            application=self._config.application,
            facility=self._config.facility,
        )
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(MllpFrame(ack).serialize())
