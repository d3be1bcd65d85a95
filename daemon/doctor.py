"""``infusiond doctor --config PATH``: is this gateway ready to run? One line per check.

Checks, in order: the configuration, the drug library (and every pump's program in it), the data
dir (usable, free space, the journal's lock, the journal's chain), the broker (a real MQTT
CONNECT with the configured TLS and credentials), every pump (its transport opened and one real
read by its driver: nothing is written to a pump), every vitals source (a listener's port can be
bound, or a peer accepts a connection), and the EHR endpoints when configured. Each line says
``ok``, ``FAIL`` or ``skipped``, what was found and, on ``FAIL``, how to fix it. The first
unusable item ends the run with exit 1; the checks after it print ``skipped``.

The doctor may run beside a running daemon: it connects to the broker with its own client id
(``<client_id>-doctor``, so the daemon keeps its session and no last will is published), says
that a daemon holds the journal, and leaves serial ports that daemon owns alone.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import errno
import json
import logging
import os
import shutil
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from daemon.config import Config, PumpConfig, VitalsSource
from daemon.config_cmd import config_problems, library_problems
from daemon.gateway import library_path, make_driver
from daemon.journal import Journal, JournalError
from daemon.logging_setup import configure_logging
from daemon.paths import DataDirError, DataDirLocked, journal_path, lock_data_dir
from drivers.errors import DriverError
from protocol.errors import InfusiondError

EXIT_OK = 0
EXIT_UNUSABLE = 1
#: below this much free space on the data dir's filesystem the journal may soon fail to write
MIN_FREE_BYTES = 100 * 1024 * 1024
#: MQTT CONNACK reason codes that mean "these credentials are not accepted"
_AUTH_CODES = frozenset({4, 5, 134, 135})


class Status(enum.StrEnum):
    """The outcome of one check."""

    OK = "ok"
    FAIL = "FAIL"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's report."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" — {self.fix}" if self.fix else ""
        return f"{self.status.value:<7} {self.check}: {self.detail}{fix}"

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail} | (
            {"fix": self.fix} if self.fix else {}
        )


class Unusable(InfusiondError):
    """Raised by a check: what is wrong and how to fix it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail, context="")
        self.detail = detail
        self.fix = fix


@dataclass
class _Context:
    path: Path
    timeout_s: float
    config: Config | None = None
    daemon_pid: int | None = None
    daemon_running: bool = False


Check = tuple[str, Callable[[], Awaitable[str]]]
SKIPPED = "not checked (an earlier check failed)"


async def diagnose(path: Path, timeout_s: float, report: Callable[[Finding], None]) -> bool:
    """Run every check in order, calling ``report`` with each finding as it is made; True
    when everything is usable. After the first failure the remaining checks are reported
    ``skipped`` (with an unusable config, by kind: its pumps and sources are unknown)."""
    ctx = _Context(path, timeout_s)
    if not await _run(f"config {path}", partial(_config, ctx), report):
        for kind in ("library", "data dir", "broker", "pumps", "vitals"):
            report(Finding(kind, Status.SKIPPED, SKIPPED))
        return False
    assert ctx.config is not None
    checks: list[Check] = [
        (f"library {library_path(ctx.config)}", partial(_library, ctx)),
        *_later_checks(ctx),
    ]
    usable = True
    for name, check in checks:
        if usable:
            usable = await _run(name, check, report)
        else:
            report(Finding(name, Status.SKIPPED, SKIPPED))
    return usable


async def _run(
    name: str, check: Callable[[], Awaitable[str]], report: Callable[[Finding], None]
) -> bool:
    try:
        detail = await check()
    except Unusable as exc:
        report(Finding(name, Status.FAIL, exc.detail, exc.fix))
        return False
    report(Finding(name, Status.OK, detail))
    return True


def _later_checks(ctx: _Context) -> list[Check]:
    config = ctx.config
    assert config is not None
    checks: list[Check] = [
        (f"data dir {config.data_dir}", lambda: _data_dir(ctx)),
        (f"broker {config.broker.url}", lambda: _broker(ctx)),
    ]
    for index, pump in enumerate(config.pumps):
        checks.append((_pump_name(pump), partial(_pump, ctx, index, pump)))
    for index, source in enumerate(config.vitals):
        checks.append((_vitals_name(source), partial(_vitals, ctx, index, source)))
    if config.hl7_out is not None:
        out = config.hl7_out
        checks.append(
            (f"ehr {out.url}", partial(_reachable, ctx, "hl7_out.url", out.host, out.port))
        )
    if config.piv is not None:
        piv = config.piv
        checks.append(
            (
                f"piv listener {piv.listen}",
                partial(_bindable, ctx, "piv.listen", piv.host, piv.port),
            )
        )
    return checks


def _pump_name(pump: PumpConfig) -> str:
    return f"pump {pump.id} ({pump.driver} {pump.url})"


def _vitals_name(source: VitalsSource) -> str:
    where = f"listen {source.listen}" if source.listen else f"connect {source.connect}"
    return f"vitals {source.bed} ({where})"


# -- config and library ---------------------------------------------------------------------


async def _config(ctx: _Context) -> str:
    config, problems = await asyncio.to_thread(config_problems, ctx.path)
    if problems:
        raise Unusable(
            "; ".join(problems),
            f"fix the keys named (`infusiond config check --config {ctx.path}` lists each)",
        )
    assert config is not None
    ctx.config = config
    return (
        f"gateway {config.gateway_id}, {len(config.pumps)} pump(s), "
        f"{len(config.vitals)} vitals source(s)"
    )


async def _library(ctx: _Context) -> str:
    config = ctx.config
    assert config is not None
    library, problems = await asyncio.to_thread(library_problems, config)
    if problems:
        raise Unusable(
            "; ".join(problems),
            f"run `infusiond library check {library_path(config)}`; "
            "check [library] and each pump's drug and library_profile",
        )
    assert library is not None
    ident = library.identity
    signed = (
        "signature verified"
        if config.library is not None and config.library.require_signature
        else "no signature required"
    )
    return (
        f"{ident.name} {ident.version} sha256 {ident.sha256[:12]}, consistent, {signed}; "
        f"every pump's drug and profile are in it"
    )


# -- data dir -------------------------------------------------------------------------------


async def _data_dir(ctx: _Context) -> str:
    config = ctx.config
    assert config is not None
    return await asyncio.to_thread(_data_dir_sync, ctx, config.data_dir)


def _data_dir_sync(ctx: _Context, data_dir: Path) -> str:
    fix = "set data_dir (top level of the config) to a writable directory"
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Unusable(f"{existing} exists and is not a directory", fix)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise Unusable(
            f"only {free // (1024 * 1024)} MiB free (at least {MIN_FREE_BYTES // (1024 * 1024)}"
            " MiB needed)",
            "free space on that filesystem or move data_dir",
        )
    if existing != data_dir:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise Unusable(f"does not exist and {existing} is not writable", fix)
        return (
            f"does not exist yet, run will create it ({existing} is writable); "
            f"{free // 2**20} MiB free"
        )
    try:
        with lock_data_dir(data_dir):
            pass
    except DataDirLocked as exc:
        ctx.daemon_running = True
        ctx.daemon_pid = exc.pid
    except DataDirError as exc:
        raise Unusable(str(exc), fix) from None
    journal = journal_path(data_dir)
    lock = (
        f"in use by a running infusiond (pid {ctx.daemon_pid})"
        if ctx.daemon_running
        else "not in use"
    )
    if not journal.exists():
        return f"writable, {free // 2**20} MiB free, {lock}, no journal yet"
    try:
        opened = Journal.open_readonly(journal)
        try:
            verdict = opened.verify()
        finally:
            opened.close()
    except JournalError as exc:
        raise Unusable(
            str(exc), "move the file aside (a new journal starts a new session)"
        ) from None
    if not verdict.ok:
        raise Unusable(
            f"journal {journal} broken at row {verdict.first_bad}: {verdict.reason}",
            "keep the file for investigation and move it aside; run starts a new journal",
        )
    return f"writable, {free // 2**20} MiB free, {lock}, journal ok ({verdict.rows} rows)"


# -- broker ---------------------------------------------------------------------------------


async def _broker(ctx: _Context) -> str:
    config = ctx.config
    assert config is not None
    broker = config.broker
    tls = None
    if broker.uses_tls:
        files = broker.tls
        tls = aiomqtt.TLSParameters(
            ca_certs=str(files.ca_file) if files and files.ca_file else None,
            certfile=str(files.cert_file) if files and files.cert_file else None,
            keyfile=str(files.key_file) if files and files.key_file else None,
        )
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password.get_secret_value() if broker.password else None,
        identifier=f"{config.client_id}-doctor"[:64],
        protocol=aiomqtt.ProtocolVersion.V5
        if broker.protocol == "5"
        else aiomqtt.ProtocolVersion.V311,
        tls_params=tls,
        timeout=ctx.timeout_s,
    )
    try:
        async with asyncio.timeout(ctx.timeout_s), client:
            pass
    except TimeoutError:
        raise Unusable(
            f"no answer within {ctx.timeout_s:g} s",
            "is the broker up and the port open (firewall)? check [broker].url",
        ) from None
    except aiomqtt.MqttError as exc:
        raise _broker_problem(exc) from None
    auth = f"as {broker.username}" if broker.username else "anonymously"
    via = "TLS" if tls is not None else "plain TCP"
    return f"MQTT {broker.protocol} CONNECT accepted ({via}, {auth})"


def _broker_problem(exc: aiomqtt.MqttError) -> Unusable:
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(code, int) and code in _AUTH_CODES:
        return Unusable(
            f"the broker refused the credentials ({exc})",
            "check [broker].username and password (INFUSIOND_BROKER__PASSWORD) and the ACL",
        )
    cause = _root_cause(exc)
    if isinstance(cause, ConnectionRefusedError):
        return Unusable(
            "connection refused",
            "is the broker (mosquitto) running and listening there? check [broker].url",
        )
    if isinstance(cause, socket.gaierror):
        return Unusable(f"host not found ({cause.strerror})", "check the host in [broker].url")
    if isinstance(cause, ssl.SSLError):
        return Unusable(
            f"TLS handshake failed ({cause.reason or cause})",
            "check [broker.tls].ca_file (and cert_file/key_file) against the broker's certificate",
        )
    return Unusable(str(exc) or type(exc).__name__, "check [broker] (url, protocol, credentials)")


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    return seen


# -- pumps ----------------------------------------------------------------------------------


async def _pump(ctx: _Context, index: int, pump: PumpConfig) -> str:
    where = f"pumps[{index}]"
    if ctx.daemon_running and pump.url.startswith("/"):
        return "not opened: the running infusiond owns this serial port"
    driver = make_driver(pump)
    try:
        async with asyncio.timeout(ctx.timeout_s):
            await driver.connect()
            status = await driver.read_status()
            identity = await driver.identity()
    except TimeoutError:
        raise Unusable(
            f"no answer within {ctx.timeout_s:g} s",
            f"is the pump on and cabled? check {where}.url, "
            + ("unit_id" if pump.driver == "modbus" else "address and baudrate"),
        ) from None
    except DriverError as exc:
        # the driver's own retry schedule means nothing here: the doctor does not retry
        detail = str(exc).split("; next attempt", 1)[0]
        raise Unusable(detail, _pump_fix(where, exc)) from None
    except OSError as exc:
        raise Unusable(
            f"cannot open {pump.url}: {exc.strerror or exc}", _pump_fix(where, exc)
        ) from None
    finally:
        await driver.close()
    alarms = ", ".join(sorted(a.value for a in status.alarms)) or "none"
    return (
        f"{identity.model} serial {identity.serial} firmware {identity.firmware}: "
        f"{status.state.value}, {status.rate_ml_h} mL/h, alarms {alarms}"
    )


def _pump_fix(where: str, exc: BaseException) -> str:
    cause = _root_cause(exc)
    if isinstance(cause, ConnectionRefusedError) or "cannot connect" in str(exc):
        return f"is the pump (or its serial/Modbus gateway) on and listening? check {where}.url"
    if isinstance(cause, FileNotFoundError):
        return f"is the serial adapter plugged in? check {where}.url"
    if isinstance(cause, PermissionError):
        return "add the service user to the dialout group"
    if "syringe" in str(exc):
        return f"load the configured syringe, or set {where}.syringe_diameter_mm to the one loaded"
    return f"check {where} (url, driver, unit_id/address) and the pump itself"


# -- vitals and EHR endpoints ---------------------------------------------------------------


async def _vitals(ctx: _Context, index: int, source: VitalsSource) -> str:
    url = source.listen if source.listen is not None else source.connect
    parts = urlsplit(url or "")
    host, port = parts.hostname or "", parts.port or 0
    if source.listen is not None:
        return await _bindable(ctx, f"vitals[{index}].listen", host, port)
    return await _reachable(ctx, f"vitals[{index}].connect", host, port)


async def _bindable(ctx: _Context, key: str, host: str, port: int) -> str:
    if port == 0:
        return "port 0: any free port, always bindable"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and ctx.daemon_running:
            return f"port {port} in use, by the running infusiond (pid {ctx.daemon_pid})"
        if exc.errno == errno.EADDRINUSE:
            raise Unusable(
                f"port {port} is in use by another program",
                f"stop it (ss -ltnp 'sport = :{port}') or choose another port in {key}",
            ) from None
        raise Unusable(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            f"check the host (an address of this machine) and port in {key}",
        ) from None
    return f"{host}:{port} can be bound"


async def _reachable(ctx: _Context, key: str, host: str, port: int) -> str:
    try:
        async with asyncio.timeout(ctx.timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise Unusable(f"no answer within {ctx.timeout_s:g} s", f"firewall? check {key}") from None
    except OSError as exc:
        raise Unusable(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            f"is the peer running and listening? check {key}",
        ) from None
    writer.close()
    await writer.wait_closed()
    return f"{host}:{port} accepts connections"


# -- entry point ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print one line (or JSON object) per check; exit 0 when all are usable, else 1."""

    def report(finding: Finding) -> None:
        text = json.dumps(finding.to_dict(), ensure_ascii=False) if args.json else finding.line()
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    # The findings say what went wrong; the libraries' own logging would only repeat it.
    configure_logging("error", stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    ok = asyncio.run(diagnose(Path(args.config), args.timeout, report))
    return EXIT_OK if ok else EXIT_UNUSABLE
