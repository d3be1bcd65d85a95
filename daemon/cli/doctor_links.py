"""The checks of ``infusiond doctor`` that reach out: the broker, every pump, every vitals source
and the EHR endpoints (daemon/cli/doctor.py runs them in order and prints the findings).

Each check returns what it found, or raises :class:`Unusable` with what is wrong and how to fix
it. Nothing is written to a pump: a pump is opened and read once by its own driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from daemon.base.config import Config
from daemon.base.config_sections import PumpConfig, VitalsSource
from daemon.core.parts import make_driver
from drivers.errors import DriverError
from protocol.errors import InfusiondError

#: MQTT CONNACK reason codes that mean "these credentials are not accepted"
_AUTH_CODES = frozenset({4, 5, 134, 135})


class Unusable(InfusiondError):
    """Raised by a check: what is wrong and how to fix it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail, context="")
        self.detail = detail
        self.fix = fix


@dataclass
class Context:
    """What the checks learn as they go (the config once read; whether a daemon runs)."""

    path: Path
    timeout_s: float
    config: Config | None = None
    daemon_pid: int | None = None
    daemon_running: bool = False


# -- broker ---------------------------------------------------------------------------------


async def check_broker(ctx: Context) -> str:
    """A TCP (and TLS) connection first, for a precise error; then a real MQTT CONNECT."""
    config = ctx.config
    assert config is not None
    broker = config.broker
    context = _tls_context(config) if broker.uses_tls else None
    await _open_and_close(broker.host, broker.port, context, ctx.timeout_s)
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password.get_secret_value() if broker.password else None,
        identifier=f"{config.client_id}-doctor"[:64],
        protocol=aiomqtt.ProtocolVersion.V5
        if broker.protocol == "5"
        else aiomqtt.ProtocolVersion.V311,
        tls_context=context,
        timeout=ctx.timeout_s,
    )
    try:
        async with asyncio.timeout(ctx.timeout_s), client:
            pass
    except TimeoutError:
        raise Unusable(
            f"no CONNACK within {ctx.timeout_s:g} s (is it an MQTT broker? right protocol?)",
            "check [broker].url and [broker].protocol",
        ) from None
    except aiomqtt.MqttError as exc:
        raise _broker_problem(exc) from None
    auth = f"as {broker.username}" if broker.username else "anonymously"
    via = "TLS" if context is not None else "plain TCP"
    return f"MQTT {broker.protocol} CONNECT accepted ({via}, {auth})"


def _tls_context(config: Config) -> ssl.SSLContext:
    files = config.broker.tls
    try:
        context = ssl.create_default_context(
            cafile=str(files.ca_file) if files and files.ca_file else None
        )
        if files is not None and files.cert_file is not None and files.key_file is not None:
            context.load_cert_chain(str(files.cert_file), str(files.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise Unusable(
            f"the TLS files cannot be used ({exc})",
            "check [broker.tls] ca_file, cert_file and key_file (PEM)",
        ) from None
    return context


async def _open_and_close(
    host: str, port: int, context: ssl.SSLContext | None, timeout_s: float
) -> None:
    fix = "is the broker (mosquitto) running and listening there? check [broker].url"
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
    except TimeoutError:
        raise Unusable(
            f"no answer within {timeout_s:g} s",
            "is the broker up and the port open (firewall)? check [broker].url",
        ) from None
    except ssl.SSLError as exc:
        raise Unusable(
            f"TLS handshake failed ({exc.reason or exc})",
            "check [broker.tls].ca_file (and cert_file/key_file) against the broker's certificate",
        ) from None
    except ConnectionRefusedError:
        raise Unusable("connection refused", fix) from None
    except socket.gaierror as exc:
        raise Unusable(
            f"host not found ({exc.strerror})", "check the host in [broker].url"
        ) from None
    except OSError as exc:
        raise Unusable(f"cannot connect: {exc.strerror or exc}", fix) from None
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):  # the broker may drop a silent client
        await writer.wait_closed()


def _broker_problem(exc: aiomqtt.MqttError) -> Unusable:
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(code, int) and code in _AUTH_CODES:
        return Unusable(
            f"the broker refused the credentials ({exc})",
            "check [broker].username and password (INFUSIOND_BROKER__PASSWORD) and the ACL",
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


async def check_pump(ctx: Context, index: int, pump: PumpConfig) -> str:
    where = f"pumps[{index}]"
    if ctx.daemon_running and (pump.url.startswith("/") or pump.driver != "modbus"):
        # A serial line (or a serial server's one connection) is the daemon's: a query of ours
        # could take the place of a reply it waits for and make its command `uncertain`.
        # Modbus TCP keeps each client's transactions apart, so that read is safe.
        return "not opened: the running infusiond owns this serial line"
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


async def check_vitals(ctx: Context, index: int, source: VitalsSource) -> str:
    url = source.listen if source.listen is not None else source.connect
    parts = urlsplit(url or "")
    host, port = parts.hostname or "", parts.port or 0
    if source.listen is not None:
        return await check_bindable(ctx, f"vitals[{index}].listen", host, port)
    if ctx.daemon_running:
        # a monitor gateway may send its next message to whichever client is connected
        return "not contacted: the running infusiond is its client"
    return await check_reachable(ctx, f"vitals[{index}].connect", host, port)


async def check_bindable(ctx: Context, key: str, host: str, port: int) -> str:
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


async def check_reachable(ctx: Context, key: str, host: str, port: int) -> str:
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
