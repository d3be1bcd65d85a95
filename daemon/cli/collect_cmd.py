"""``infusiond fleet collect [--config FILE] [--broker URL] [--postgres DSN] ...``
(its options are declared in daemon/cli/app.py; the file's shape in
:mod:`daemon.fleet.collect_settings`).

A flag given on the command line overrides the same key of the file. Every problem is found
before anything connects (TLS files included), and named by where it came from: the flag
(``--broker 'http://h': ...``) or the file's key (``collector.toml: broker.tls.ca_file: ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import tomllib
from pathlib import Path

from pydantic import SecretStr, ValidationError

from daemon.base.logging_setup import configure_logging
from daemon.base.payload import JsonObject
from daemon.core.sdnotify import Notifier
from daemon.fleet.collect_settings import NAME_RULE, CollectorSettings, check_name, tls_context
from daemon.fleet.collector import Collector, CollectorConfig
from daemon.fleet.errors import FleetError
from daemon.fleet.migrate import migrate
from daemon.fleet.store import connect
from protocol.request import describe_validation_errors, field_path

#: the MQTT password comes from the environment or a file, never from the command line (ps
#: shows it)
PASSWORD_ENV = "INFUSIOND_FLEET_MQTT_PASSWORD"  # noqa: S105 - a variable name

_NAMED = re.compile(r"^([a-z_]+): ")
#: flag -> (the key it sets, its attribute in ``args``)
_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "--broker": (("broker", "url"), "broker"),
    "--username": (("broker", "username"), "username"),
    "--client-id": (("broker", "client_id"), "client_id"),
    "--postgres": (("postgres",), "postgres"),
    "--group": (("group",), "group"),
    "--batch": (("batch",), "batch"),
    "--log-level": (("log_level",), "log_level"),
}


def build_config(args: argparse.Namespace) -> tuple[CollectorConfig, str]:
    """The collector's configuration and log level; :class:`FleetError` names the bad flag or
    key (and never a password)."""
    source = args.config if args.config is not None else "the command line"
    data = _read_file(Path(args.config)) if args.config is not None else {}
    broker = data.setdefault("broker", {})
    if not isinstance(broker, dict):
        msg = f"{source}: broker: must be a table ([broker])"
        raise FleetError(msg)
    if "password" in broker:
        msg = (
            f"{source}: broker.password: keep the password out of this file: "
            f"password_file = PATH (e.g. a systemd credential) or {PASSWORD_ENV}"
        )
        raise FleetError(msg)
    given: dict[tuple[str, ...], str] = {}
    for flag, (key, attr) in _FLAGS.items():
        value = getattr(args, attr)
        if value is None:
            continue
        if flag == "--broker" and "://" not in value:
            value = f"mqtt://{value}"  # host[:port], as before
        _put(data, key, value)
        given[key] = f"{flag} {getattr(args, attr)!r}"
    password = os.environ.get(PASSWORD_ENV) or None
    if password is not None:
        if broker.get("username") is None:
            msg = f"{PASSWORD_ENV} is set but --username is not: give both"
            raise FleetError(msg)
        _put(data, ("broker", "password"), password)
    try:
        settings = CollectorSettings.model_validate(data)
    except ValidationError as exc:
        raise FleetError(*_problems(exc, given, source)) from None
    if "url" not in settings.broker.model_fields_set:
        msg = "--broker URL (or [broker] url in the --config file) is required"
        raise FleetError(msg)
    if settings.postgres is None:
        msg = "--postgres DSN (or postgres in the --config file) is required"
        raise FleetError(msg)
    return _collector_config(settings), settings.log_level


def _collector_config(settings: CollectorSettings) -> CollectorConfig:
    broker = settings.broker
    group = settings.group
    host_name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:30]
    client_id = broker.client_id or "-".join(
        ["infusiond-collector", host_name, *([group] if group else [])]
    )
    try:
        check_name(client_id)
    except ValueError:
        msg = f"--client-id {client_id!r}: {NAME_RULE}"
        raise FleetError(msg) from None
    secret = broker.password
    if broker.password_file is not None:
        secret = SecretStr(_read_password(broker.password_file))
    assert settings.postgres is not None  # checked by build_config
    return CollectorConfig(
        host=broker.host,
        port=broker.port,
        dsn=settings.postgres,
        client_id=client_id,
        group=group,
        username=broker.username,
        password=secret.get_secret_value() if secret is not None else None,
        batch_max=settings.batch,
        keepalive_s=broker.keepalive_s,
        tls_context=tls_context(broker),
    )


def _read_file(path: Path) -> JsonObject:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        msg = f"--config {path}: not found"
    except OSError as exc:
        msg = f"--config {path}: cannot be read ({exc.strerror})"
    except tomllib.TOMLDecodeError as exc:
        msg = f"--config {path}: not valid TOML ({exc})"
    raise FleetError(msg)


def _read_password(path: Path) -> str:
    """The file's first line (a trailing newline is not part of the password)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        msg = f"broker.password_file {path}: cannot be read ({reason})"
        raise FleetError(msg) from None
    password = text.splitlines()[0] if text else ""
    if not password:
        msg = f"broker.password_file {path}: is empty"
        raise FleetError(msg)
    return password


def _put(data: JsonObject, key: tuple[str, ...], value: object) -> None:
    """Set ``key`` (a top-level key or one of ``[broker]``, a table by then)."""
    table = data[key[0]] if len(key) > 1 else data
    table[key[-1]] = value


def _problems(exc: ValidationError, given: dict[tuple[str, ...], str], source: str) -> list[str]:
    """Each problem named by the flag that gave the value, else by the file's key (a table's
    own check naming one of its keys is put under it: ``broker.tls.cert_file: ...``); a path
    that is not a file is shown."""
    flagged = {field_path(key): name for key, name in given.items()}
    paths = {
        field_path(tuple(e["loc"])): e["input"]
        for e in exc.errors()
        if str(e["type"]).startswith("path_")
    }
    problems = []
    for text in describe_validation_errors(exc):
        where, _, what = text.partition(": ")
        if where in paths:
            what += f" ({paths[where]})"
        inner = _NAMED.match(what)
        if inner is not None:
            where, what = f"{where}.{inner[1]}", what[inner.end() :]
        flag = flagged.get(where)
        problems.append(f"{flag}: {what}" if flag is not None else f"{source}: {where}: {what}")
    return problems


async def collect(config: CollectorConfig, log_level: str = "info") -> None:
    """Check the database (fail fast on a bad DSN), then collect until SIGTERM/SIGINT.

    Under systemd (``Type=notify``) READY=1 is sent once the schema is migrated and the first
    subscription is made; a broker refusing the first connection ends the command before it
    (:class:`~daemon.fleet.errors.BrokerRefused`), so the unit fails to start rather than
    running half."""
    conn = await connect(config.dsn)
    async with conn:
        await migrate(conn)
    configure_logging(log_level)
    collector = Collector(config)
    notifier = Notifier()

    def stop() -> None:
        notifier.notify(STOPPING="1")
        collector.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        running = asyncio.create_task(collector.run(), name="fleet-collector")
        online = asyncio.create_task(collector.online.wait(), name="fleet-collector-online")
        await asyncio.wait({running, online}, return_when=asyncio.FIRST_COMPLETED)
        if online.done():
            via = "mqtts" if config.tls_context is not None else "mqtt"
            notifier.notify(
                READY="1", STATUS=f"collecting from {via}://{config.host}:{config.port}"
            )
        else:
            online.cancel()
        await running
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond fleet collect``."""
    config, log_level = build_config(args)
    asyncio.run(collect(config, log_level))
    return 0
