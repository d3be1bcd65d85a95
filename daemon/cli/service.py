"""``infusiond run --config PATH``: the gateway service (what systemd starts)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import structlog

from daemon.base.config import Config, load_config
from daemon.base.logging_setup import configure_logging
from daemon.core.gateway import Gateway
from daemon.core.poll_stats import LATENESS, STATS_PATH
from daemon.ui.web_server import WebServer

log = structlog.get_logger(__name__)


async def serve(config: Config) -> None:
    """Run a gateway until SIGTERM/SIGINT, then stop it cleanly."""
    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    if LATENESS is not None and STATS_PATH is not None:  # benchmark hook, off by default
        loop.add_signal_handler(signal.SIGUSR1, LATENESS.dump_soon, STATS_PATH)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if config.http is not None:
                web = await stack.enter_async_context(
                    WebServer(
                        config.http.host,
                        config.http.port,
                        broker_ws_url=config.http.broker_ws_url,
                        gateway=config.gateway_id,
                        history=gateway.history(),
                        metrics_registry=gateway.metrics.registry,
                    )
                )
                log.info("http_listening", url=web.url)
            await gateway.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond run``; configuration errors name the key (exit 1)."""
    config = load_config(Path(args.config))
    configure_logging(config.log_level)
    asyncio.run(serve(config))
    return 0
