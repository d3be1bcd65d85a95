"""HL7 vitals in the default mode (``[[vitals]] listen``): listen for monitor connections.

``async with VitalsListener(on_sample, host=..., port=0) as listener:`` binds (``port=0``
picks a free port, see :attr:`VitalsListener.port`), holds up to ``max_connections``
monitors, and acknowledges every message. Nothing a peer sends can stop the listener.

Slots cannot be starved: when every slot is held, a new connection evicts the longest-idle
peer at once (peers that never completed a frame first, then the one whose last complete frame
is oldest), so a monitor that is sending is never the one pushed out by sockets that only sit
there; and ``ReceiverConfig.idle_timeout_s`` closes a peer that completes no frame for that
long, however many stray bytes it trickles. Each connection's buffer is capped at
``ReceiverConfig.max_frame``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

import structlog

from drivers.hl7.receiver import MllpReceiverProtocol, ReceiverConfig, ReceiverStats
from drivers.hl7.url import DEFAULT_PORT

log = structlog.get_logger(__name__)


class VitalsListener:
    """MLLP server that feeds every accepted ORU^R01 to ``config.on_sample``."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_connections: int = 16,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.config = config
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.stats = ReceiverStats()
        self._server: asyncio.Server | None = None
        self._connections: set[MllpReceiverProtocol] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``tcp://host:port`` of the bound socket."""
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_protocol, self.host, self._port)
        log.info("hl7.listening", url=self.url)

    @property
    def connections(self) -> int:
        """Connections holding a slot now."""
        return len(self._connections)

    def _make_protocol(self) -> asyncio.Protocol:
        if len(self._connections) >= self.max_connections:
            self._evict_longest_idle()
        protocol = MllpReceiverProtocol(self.config, self.stats, self._lost)
        self._connections.add(protocol)
        return protocol

    def _evict_longest_idle(self) -> None:
        """Free a slot: close the peer that never sent a frame, else the longest since one."""
        victim = min(self._connections, key=lambda p: (p.frames > 0, p.last_frame_at, p.serial))
        self._connections.discard(victim)
        self.stats.evicted += 1
        log.warning(
            "hl7.evicted_idle_peer",
            peer=victim.peer,
            limit=self.max_connections,
            frames=victim.frames,
            idle_s=round(asyncio.get_running_loop().time() - victim.last_frame_at, 3),
        )
        victim.close()

    def _lost(self, protocol: MllpReceiverProtocol, _exc: Exception | None) -> None:
        self._connections.discard(protocol)

    async def close(self) -> None:
        """Stop accepting, close every connection, wait for the server to wind down."""
        if self._server is None:
            return
        self._server.close()
        for protocol in list(self._connections):
            protocol.close()
        await self._server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        """Start (if needed) and run until cancelled; closes on the way out."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
