"""A small hospital for fleet tests: gateways on a ward mosquitto bridged to a central one,
collectors as real ``infusiond fleet collect`` processes, PostgreSQL from tests/support.

The ward broker carries the bridge (as a ward broker in production does: it dials out to the
central one); its config is :func:`ward_bridge_conf`, the one docs/fleet.md shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg

from daemon.base.config import Config
from daemon.base.events import Alarm, AlarmCleared, Priority
from daemon.cli.collect_cmd import PASSWORD_ENV
from daemon.core.gateway import Gateway
from daemon.fleet.store import NOTIFY_CHANNEL
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.support.procs import READY_TIMEOUT_S, Mosquitto, wait_for_line

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0

#: topics a ward forwards to the central broker, and the one it takes back (backfill requests)
BRIDGED_OUT = (
    "infusiond/+/pump/+/event",
    "infusiond/+/pump/+/state",
    "infusiond/+/pump/+/command/result",
    "infusiond/+/bridge/info",
    "infusiond/+/bridge/state",
    "infusiond/+/bridge/response/events",
)
BRIDGED_IN = ("infusiond/+/bridge/request/events",)


def ward_bridge_conf(central: str, name: str = "ward-1") -> list[str]:
    """mosquitto.conf lines of a ward broker's bridge to the central broker at ``central``
    (``host:port``; docs/fleet.md shows these very lines)."""
    return [
        f"connection {name}-to-central",
        f"address {central}",
        f"remote_clientid bridge-{name}",
        "cleansession false",
        "bridge_protocol_version mqttv50",
        "restart_timeout 1 2",
        "keepalive_interval 10",
        "try_private true",
        *(f"topic {t} out 1" for t in BRIDGED_OUT),
        *(f"topic {t} in 1" for t in BRIDGED_IN),
    ]


@contextlib.contextmanager
def bridged_brokers(tmp_path: Path, central_conf: tuple[str, ...] = ()) -> Any:
    """(ward, central): two mosquittos, the ward bridged to the central one; the bridge is up
    when this yields (the ward logs its connection). ``central_conf``: extra mosquitto.conf
    lines of the central broker."""
    central = Mosquitto(tmp_path / "central", extra_conf=list(central_conf))
    central.start()
    ward = Mosquitto(tmp_path / "ward", extra_conf=ward_bridge_conf(f"127.0.0.1:{central.port}"))
    try:
        ward.start()
        assert central.proc is not None
        wait_for_line(central.proc, b"as bridge-ward-1", READY_TIMEOUT_S)
        yield ward, central
    finally:
        ward.stop()
        central.stop()


def gateway_config(
    gateway_id: str,
    data_dir: Path,
    broker_url: str,
    modbus_url: str,
    login: tuple[str, str] | None = None,
    tls: dict[str, str] | None = None,
) -> Config:
    broker: dict[str, Any] = {"url": broker_url}
    if login is not None:
        broker |= {"username": login[0], "password": login[1]}
    if tls is not None:
        broker["tls"] = tls
    return Config(
        gateway_id=gateway_id,
        data_dir=data_dir,
        broker=broker,
        pumps=[
            {
                "id": "pump-1",
                "driver": "modbus",
                "url": modbus_url,
                "unit_id": 1,
                "drug": "norepinephrine",
                "concentration": {"value": 4, "unit": "ug/mL"},
                "poll_period_s": 0.25,
                "bed": "bed-1",
                "library_profile": "adult-icu",
                "weight_kg": 70,
                "diluent": "D5W",
                "route": "central",
            }
        ],
    )


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    gateway_id: str,
    broker: Mosquitto,
    login: tuple[str, str] | None = None,
    tls: dict[str, str] | None = None,
) -> AsyncIterator[Gateway]:
    """A real Gateway with one simulated Modbus pump, publishing to ``broker`` (over TLS with
    ``tls``: the ``[broker.tls]`` table)."""
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))], clock=SimClock()
    )
    async with modbus.serving("tcp://127.0.0.1:0") as served:
        config = gateway_config(
            gateway_id, tmp_path / gateway_id, broker.url, served.url, login, tls
        )
        gateway = Gateway(config)
        task = asyncio.create_task(gateway.run(), name=f"gateway:{gateway_id}")
        try:
            async with asyncio.timeout(WAIT_S):
                await gateway.ready.wait()
            yield gateway
        finally:
            gateway.stop()
            async with asyncio.timeout(WAIT_S):
                await task


async def emit(gateway: Gateway, count: int) -> None:
    """``count`` events through the gateway's real path (journal, outbox, MQTT bridge)."""
    for n in range(count):
        alarm = Alarm(f"t{n}", Priority.LOW, gateway.clock())
        await gateway.journal.record_event("pump-1", AlarmCleared(alarm))


@dataclass
class CollectorProcess:
    """``infusiond fleet collect`` as a child process (so a test can kill -9 it). With
    ``config`` (a ``--config`` file holding the broker and the DSN) it gets only that file and
    its client id; ``env``: more environment variables."""

    broker: Mosquitto
    dsn: str
    client_id: str
    group: str | None = None
    log_path: Path | None = None
    login: tuple[str, str] | None = None
    config: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _drain: threading.Thread | None = None

    def start(self) -> None:
        """Start and wait for its ``collector_online`` log line (connected and subscribed)."""
        argv = [sys.executable, "-m", "daemon.cli", "fleet", "collect"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        else:
            argv += ["--broker", self.broker.url, "--postgres", self.dsn, "--log-level", "info"]
        argv += ["--client-id", self.client_id]
        if self.group:
            argv += ["--group", self.group]
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        if self.login is not None:
            argv += ["--username", self.login[0]]
            env[PASSWORD_ENV] = self.login[1]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        assert self.proc.stdout is not None
        seen = wait_for_line(self.proc, b"collector_online", READY_TIMEOUT_S * 3, self.proc.stdout)
        # keep reading its log (a full pipe would stall it), into a file for diagnostics
        self._drain = threading.Thread(
            target=_drain, args=(self.proc.stdout, self.log_path, seen), daemon=True
        )
        self._drain.start()

    def kill(self) -> None:
        """kill -9: no flush, no DISCONNECT, no PUBACK for what it had not committed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._drain is not None:
            self._drain.join(timeout=15)
            self._drain = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _drain(stream: IO[bytes], path: Path | None, first: bytes) -> None:
    """Copy a child's output to ``path`` (or nowhere) until it closes."""
    with open(os.devnull if path is None else path, "ab") as out:  # noqa: PTH123
        out.write(first)
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            out.write(chunk)
            out.flush()


@contextlib.contextmanager
def collectors(*procs: CollectorProcess) -> Any:
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def wait_for_events(dsn: str, expected: dict[str, tuple[str, int]]) -> None:
    """Wait until, per gateway, the store holds as many events of its session as ``expected``
    says ``(session, last seq)`` and no gap is left open: woken by the collectors' NOTIFY
    after every commit (gap bookkeeping follows its batch in a transaction of its own)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        async with asyncio.timeout(WAIT_S):
            while True:
                held = await counts(conn)
                cur = await conn.execute("SELECT count(*) FROM gaps")
                open_gaps = (await cur.fetchone() or (0,))[0]
                if open_gaps == 0 and all(
                    held.get(gw) == (s, n) for gw, (s, n) in expected.items()
                ):
                    return
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass


async def counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, tuple[str, int]]:
    """Per gateway: (session, number of events held) of its sessions (one each here)."""
    cur = await conn.execute("SELECT gateway, session, count(*) FROM events GROUP BY 1, 2")
    return {str(g): (str(s), int(n)) for g, s, n in await cur.fetchall()}


async def assert_store_matches_journals(dsn: str, gateways: list[Gateway]) -> None:
    """Per gateway session: seqs exactly 1..N, each event's data as journaled, no gap left."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for gateway in gateways:
            last = gateway.journal.seq
            rows = await gateway.journal.events_by_seq(1, last, last)
            journaled = {int(r.payload["seq"]): (r.pump_id, r.payload["event"]) for r in rows}
            cur = await conn.execute(
                "SELECT session, seq, pump_id, data FROM events WHERE gateway = %s ORDER BY seq",
                (gateway.config.gateway_id,),
            )
            stored = await cur.fetchall()
            assert [row[1] for row in stored] == list(range(1, last + 1))
            assert {row[0] for row in stored} == {gateway.journal.session}
            assert {row[1]: (row[2], row[3]) for row in stored} == journaled
        cur = await conn.execute("SELECT * FROM gaps")
        assert await cur.fetchall() == []


def expected(gateways: list[Gateway]) -> dict[str, tuple[str, int]]:
    return {g.config.gateway_id: (g.journal.session, g.journal.seq) for g in gateways}
