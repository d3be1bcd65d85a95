"""``infusiond fleet collect --broker URL --postgres DSN [--group NAME] [--client-id ID]``
(its options are declared in daemon/cli/app.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket

from daemon.base.logging_setup import configure_logging
from daemon.fleet.collector import Collector, CollectorConfig
from daemon.fleet.errors import FleetError
from daemon.fleet.migrate import migrate
from daemon.fleet.store import connect
from daemon.ui.watch import parse_broker

#: the MQTT password comes from the environment, never from the command line (ps shows it)
PASSWORD_ENV = "INFUSIOND_FLEET_MQTT_PASSWORD"  # noqa: S105 - a variable name
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def build_config(args: argparse.Namespace) -> CollectorConfig:
    """The collector's configuration; :class:`FleetError` names the bad option."""
    try:
        host, port = parse_broker(args.broker)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    group = args.group
    if group is not None and not _NAME.match(group):
        msg = f"--group {group!r}: 1 to 64 letters, digits, '_', '.', '-' (no '/', '+', '#')"
        raise FleetError(msg)
    host_name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:30]
    client_id = args.client_id or "-".join(
        ["infusiond-collector", host_name, *([group] if group else [])]
    )
    if not _NAME.match(client_id):
        msg = f"--client-id {client_id!r}: 1 to 64 letters, digits, '_', '.', '-'"
        raise FleetError(msg)
    if not 1 <= args.batch <= 10_000:
        msg = f"--batch {args.batch}: must be between 1 and 10000"
        raise FleetError(msg)
    password = os.environ.get(PASSWORD_ENV) or None
    if password is not None and args.username is None:
        msg = f"{PASSWORD_ENV} is set but --username is not: give both"
        raise FleetError(msg)
    return CollectorConfig(
        host=host,
        port=port,
        dsn=args.postgres,
        client_id=client_id,
        group=group,
        username=args.username,
        password=password,
        batch_max=args.batch,
    )


async def collect(config: CollectorConfig, log_level: str = "info") -> None:
    """Check the database (fail fast on a bad DSN), then collect until SIGTERM/SIGINT."""
    conn = await connect(config.dsn)
    async with conn:
        await migrate(conn)
    configure_logging(log_level)
    collector = Collector(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stop)
    try:
        await collector.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond fleet collect``."""
    config = build_config(args)
    if args.log_level.upper() not in logging.getLevelNamesMapping():
        msg = f"--log-level {args.log_level!r}: one of debug, info, warning, error"
        raise FleetError(msg)
    asyncio.run(collect(config, args.log_level))
    return 0
