"""The collector in production shape: ``fleet collect --config FILE`` over mqtts:// with a
client certificate, a password from a file and the shipped ACL, against a real mosquitto that
requires certificates; READY=1 to systemd once it collects. Each way the broker can refuse it
ends the command at start with one line on stderr (exit 1), and READY=1 is never sent."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.cli.app import build_parser
from daemon.cli.collect_cmd import build_config
from daemon.fleet.collector import Collector
from tests.fleet.tls_broker import CertBroker, cert_broker, make_client_certificate
from tests.fleet.topology import (
    REPO,
    WAIT_S,
    CollectorProcess,
    assert_store_matches_journals,
    collectors,
    emit,
    expected,
    running_gateway,
    wait_for_events,
)
from tests.security.test_broker_tls_acl import make_certificates
from tests.support.procs import wait_for_line

LOGINS = {"infusiond-gw-a": "gw-1", "fleet-collector": "fleet-2"}
#: what mosquitto logs (log_type all) when it refuses a login
REFUSED = b"disconnected, not authorised"

pytestmark = [pytest.mark.slow]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[CertBroker]:
    with cert_broker(tmp_path / "central", LOGINS, "gw-a") as running:
        yield running


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notification socket (abstract namespace: no path length
    limit), and the NOTIFY_SOCKET value naming it."""
    name = f"@infusiond-fleet-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.setblocking(False)
    try:
        yield sock, name
    finally:
        sock.close()


def write_config(
    tmp_path: Path,
    broker: CertBroker,
    dsn: str,
    *,
    password: str = LOGINS["fleet-collector"],
    ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> Path:
    """collector.toml as docs/fleet.md shows it: the password in a file of its own."""
    secret = tmp_path / "mqtt-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    lines = [
        f'postgres = "{dsn}"',
        'group = "ingest"',
        "[broker]",
        f'url = "{broker.url}"',
        'username = "fleet-collector"',
        f'password_file = "{secret}"',
        "[broker.tls]",
        f'ca_file = "{ca or broker.ca}"',
    ]
    if client_cert is not None:
        lines += [f'cert_file = "{client_cert[0]}"', f'key_file = "{client_cert[1]}"']
    path = tmp_path / "collector.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.asyncio
async def test_over_mqtts_with_a_client_certificate_and_the_acl_it_stores_every_event(
    tmp_path: Path,
    broker: CertBroker,
    postgres_dsn: str,
    notify_socket: tuple[socket.socket, str],
) -> None:
    """The gateway and the collector both connect with a certificate the broker's CA signed
    and their passwords; the collector backfills what came before it and stores the live
    events through its shared group (the ACL's fleet-collector role); systemd hears READY=1
    once it collects."""
    sock, notify_name = notify_socket
    gw_cert, gw_key = make_client_certificate(broker.etc, broker.ca, "gw-a")
    gw_tls = {"ca_file": str(broker.ca), "cert_file": str(gw_cert), "key_file": str(gw_key)}
    gw_login = ("infusiond-gw-a", LOGINS["infusiond-gw-a"])
    client_cert = make_client_certificate(broker.etc, broker.ca, "fleet-collector")
    config = write_config(tmp_path, broker, postgres_dsn, client_cert=client_cert)
    async with running_gateway(tmp_path, "gw-a", broker, login=gw_login, tls=gw_tls) as gateway:
        await emit(gateway, 20)  # before any collector: only a backfill can bring these
        collector = CollectorProcess(
            broker,
            postgres_dsn,
            "collector-tls",
            log_path=tmp_path / "c.log",
            config=config,
            env={"NOTIFY_SOCKET": notify_name},
        )
        with collectors(collector):
            loop = asyncio.get_running_loop()
            ready = await asyncio.wait_for(loop.sock_recv(sock, 1024), 30)
            assert ready == f"READY=1\nSTATUS=collecting from {broker.url}".encode()
            await wait_for_events(postgres_dsn, expected([gateway]))
            await emit(gateway, 20)  # live, through $share/ingest/...
            await wait_for_events(postgres_dsn, expected([gateway]))
        assert sock.recv(1024) == b"STOPPING=1"
        await assert_store_matches_journals(postgres_dsn, [gateway])


def set_password(broker: CertBroker, user: str, password: str) -> None:
    """Change ``user``'s password in the broker's password file (read again at its restart)."""
    cmd = ["mosquitto_passwd", "-b", str(broker.etc / "passwd"), user, password]
    subprocess.run(cmd, check=True, capture_output=True)


def _other_ca(tmp_path: Path) -> Path:
    other = tmp_path / "other-ca"
    other.mkdir()
    ca, _crt, _key = make_certificates(other)
    return ca


@pytest.mark.parametrize(
    "case",
    ["untrusted broker", "no client certificate", "foreign client certificate", "bad password"],
)
def test_each_refusal_by_the_broker_is_one_line_and_exit_1_before_ready(
    tmp_path: Path,
    broker: CertBroker,
    postgres_dsn: str,
    notify_socket: tuple[socket.socket, str],
    case: str,
) -> None:
    sock, notify_name = notify_socket
    client_cert: tuple[Path, Path] | None = make_client_certificate(
        broker.etc, broker.ca, "fleet-collector"
    )
    ca, password = broker.ca, LOGINS["fleet-collector"]
    where = f"the broker at 127.0.0.1:{broker.port}"
    if case == "untrusted broker":
        ca = _other_ca(tmp_path)
        message = f"{where} presented a certificate this collector does not trust"
    elif case == "no client certificate":
        client_cert = None
        message = f"{where} refused the TLS session (tlsv13 alert certificate required)"
    elif case == "foreign client certificate":
        client_cert = make_client_certificate(tmp_path, _other_ca(tmp_path), "x")
        message = f"{where} refused the TLS session ("
    else:
        password = "guess"
        message = (
            f"{where} refused the login (user 'fleet-collector'): CONNACK reason code 135 "
            "(Not authorized); check [broker] username, the password"
        )
    config = write_config(
        tmp_path, broker, postgres_dsn, password=password, ca=ca, client_cert=client_cert
    )
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "fleet", "collect", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": notify_name},
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("infusiond: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert "guess" not in done.stderr + done.stdout
    assert "collector_online" not in done.stdout
    with pytest.raises(BlockingIOError):  # nothing was sent: not READY=1, not anything
        sock.recv(1024)


@pytest.mark.asyncio
async def test_a_refusal_after_the_first_connection_is_retried_not_fatal(
    tmp_path: Path, broker: CertBroker, postgres_dsn: str
) -> None:
    """Once the collector has collected, a broker that refuses its password (rotated on the
    broker first) is an outage: the collector keeps retrying and comes back online when the
    password matches again, instead of stopping."""
    client_cert = make_client_certificate(broker.etc, broker.ca, "fleet-collector")
    path = write_config(tmp_path, broker, postgres_dsn, client_cert=client_cert)
    args = build_parser().parse_args(["fleet", "collect", "--config", str(path)])
    config, _level = build_config(args)
    collector = Collector(replace(config, client_id="collector-rotation"))
    task = asyncio.create_task(collector.run(), name="test-collector")
    try:
        async with asyncio.timeout(WAIT_S):
            await collector.online.wait()
        set_password(broker, "fleet-collector", "rotated")
        broker.restart()
        assert broker.proc is not None
        for _ in range(2):  # refused twice: the first refusal was retried, not raised
            await asyncio.to_thread(wait_for_line, broker.proc, REFUSED, WAIT_S)
        assert not task.done()
        assert not collector.online.is_set()
        set_password(broker, "fleet-collector", LOGINS["fleet-collector"])
        broker.restart()
        async with asyncio.timeout(WAIT_S):
            await collector.online.wait()
        assert collector.stats.connections == 2
    finally:
        collector.stop()
        await task


@pytest.mark.asyncio
async def test_tcp_nodelay_stays_on_the_tls_connection(
    tmp_path: Path, broker: CertBroker, postgres_dsn: str
) -> None:
    """The collector's MQTT client over mqtts:// still sets TCP_NODELAY (small PUBACKs and
    backfill requests must not wait for Nagle)."""
    client_cert = make_client_certificate(broker.etc, broker.ca, "fleet-collector")
    path = write_config(tmp_path, broker, postgres_dsn, client_cert=client_cert)
    config, _level = build_config(
        build_parser().parse_args(["fleet", "collect", "--config", str(path)])
    )
    client = Collector(config)._client()
    async with client:
        sock = client._client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}
