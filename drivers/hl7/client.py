"""HL7 vitals in client mode (``[[vitals]] connect``): connect to a monitor gateway that sends.

Some central-station gateways accept connections and push ORU^R01 to whoever connects. The
client keeps one connection up, reconnecting with capped, jittered backoff, and acknowledges
messages exactly as the listener does.
"""

from __future__ import annotations

import asyncio

import structlog

from drivers.backoff import Backoff
from drivers.hl7.receiver import MllpReceiverProtocol, ReceiverConfig, ReceiverStats

log = structlog.get_logger(__name__)


class VitalsClient:
    """Connects to ``host:port`` and receives vitals until cancelled."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        host: str,
        port: int,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.backoff = backoff or Backoff(initial_s=0.5, maximum_s=30.0)
        self.connect_timeout_s = connect_timeout_s
        self.stats = ReceiverStats()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Connect, receive, reconnect after any loss; returns only by cancellation."""
        loop = asyncio.get_running_loop()
        while True:
            lost: asyncio.Future[None] = loop.create_future()

            def on_lost(
                _p: MllpReceiverProtocol, _e: Exception | None, f: asyncio.Future[None] = lost
            ) -> None:
                if not f.done():
                    f.set_result(None)

            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    transport, _ = await loop.create_connection(
                        lambda: MllpReceiverProtocol(self.config, self.stats, on_lost),
                        self.host,
                        self.port,
                    )
            except (OSError, TimeoutError) as exc:
                delay = self.backoff.next_delay()
                log.warning(
                    "hl7.connect_failed",
                    host=self.host,
                    port=self.port,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self.connected.set()
            try:
                await lost
            finally:
                self.connected.clear()
                transport.close()
            await asyncio.sleep(self.backoff.next_delay())
