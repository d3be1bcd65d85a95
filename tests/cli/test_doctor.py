"""`infusiond doctor`: real broker, real simulators, real sockets; one line per check, exit 1 and
`skipped` after the first unusable item."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.base.paths import journal_path
from daemon.cli.doctor import Finding, Status, diagnose
from daemon.journal import AsyncJournal, JournalKind
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator
from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator
from tests.reliability.harness import GW
from tests.security.test_broker_tls_acl import (  # the shipped TLS + ACL broker, reused
    PASSWORDS,
    ShippedBroker,
    make_certificates,
    secured_broker,
)
from tests.support.procs import Mosquitto

__all__ = ["secured_broker"]  # a fixture: imported to be used, not called

TIMEOUT_S = 1.0
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@dataclass
class Bench:
    """A broker and two simulated pumps (Modbus TCP unit 1, New Era address 0)."""

    broker_url: str
    modbus_url: str
    newera_url: str


@contextlib.asynccontextmanager
async def bench(broker: Mosquitto) -> AsyncIterator[Bench]:
    modbus = ModbusPumpSimulator(
        [ModbusPumpSetup(unit_id=1, status="infusing", rate_ml_h=Decimal("52.5"))]
    )
    newera = NewEraSimulator(
        [NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), reset_alarm=False)]
    )
    async with modbus.serving("tcp://127.0.0.1:0") as served, newera.serving("tcp://127.0.0.1:0"):
        yield Bench(broker.url, served.url, newera.url)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound by us, never listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def config_text(
    tmp_path: Path,
    b: Bench,
    *,
    vitals: str = "mllp://127.0.0.1:0",
    vitals_key: str = "listen",
    profile: str = "adult-icu",
    extra_broker: str = "",
) -> str:
    return f"""
gateway_id = "gw-doctor"
data_dir = "{tmp_path / "data"}"

[broker]
url = "{b.broker_url}"
{extra_broker}

[[vitals]]
{vitals_key} = "{vitals}"
bed = "bed-1"

[[pumps]]
id = "pump-1"
driver = "modbus"
url = "{b.modbus_url}"
drug = "norepinephrine"
concentration = {{ value = 4, unit = "ug/mL" }}
diluent = "D5W"
route = "central"
library_profile = "{profile}"
weight_kg = 70

[[pumps]]
id = "pump-2"
driver = "newera"
url = "{b.newera_url}"
drug = "vasopressin"
concentration = {{ value = 0.2, unit = "[USP'U]/mL" }}
diluent = "D5W"
route = "central"
library_profile = "adult-icu"
"""


async def doctor(tmp_path: Path, text: str) -> tuple[bool, list[Finding]]:
    path = tmp_path / "infusiond.toml"
    path.write_text(text, encoding="utf-8")
    findings: list[Finding] = []
    ok = await diagnose(path, TIMEOUT_S, findings.append)
    return ok, findings


def by_status(findings: list[Finding]) -> list[tuple[str, Status]]:
    return [(f.check.split(" ", 1)[0], f.status) for f in findings]


@pytest.mark.asyncio
async def test_a_healthy_bedside_passes_every_check(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Config, library, data dir, broker, both pumps (one real read each) and the vitals
    listener are all `ok`, each line saying what was found."""
    async with bench(mosquitto) as b:
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert ok, [f.line() for f in findings]
    assert by_status(findings) == [
        ("config", Status.OK),
        ("library", Status.OK),
        ("data", Status.OK),
        ("broker", Status.OK),
        ("pump", Status.OK),
        ("pump", Status.OK),
        ("vitals", Status.OK),
    ]
    text = "\n".join(f.line() for f in findings)
    assert "infusing, 52.50 mL/h" in text or "infusing, 52.5 mL/h" in text  # the Modbus read
    assert "MQTT 5 CONNECT accepted" in text
    assert "vasopressors-example" in text


@pytest.mark.asyncio
async def test_invalid_config_fails_first_and_everything_after_is_skipped(
    tmp_path: Path,
) -> None:
    """A config with two bad keys: one FAIL line naming both and how to list them, then every
    other check `skipped`."""
    ok, findings = await doctor(tmp_path, 'gateway_id = "bad id"\n[broker]\nkeepalive_s = 1\n')
    assert not ok
    assert findings[0].status is Status.FAIL
    assert "gateway_id" in findings[0].detail
    assert "broker.keepalive_s" in findings[0].detail
    assert "infusiond config check" in findings[0].fix
    assert {f.status for f in findings[1:]} == {Status.SKIPPED}
    assert len(findings) > 1


@pytest.mark.asyncio
async def test_a_profile_missing_from_the_library_fails_the_library_check(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A pump's library_profile that the library lacks: the library line FAILs naming
    pumps[0].library_profile and the known profiles."""
    async with bench(mosquitto) as b:
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b, profile="adult-icuu"))
    assert not ok
    assert by_status(findings)[:2] == [("config", Status.OK), ("library", Status.FAIL)]
    assert "pumps[0].library_profile" in findings[1].detail
    assert "adult-icu" in findings[1].detail
    assert "infusiond library check" in findings[1].fix


@pytest.mark.asyncio
async def test_a_data_dir_that_is_a_file_fails(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """data_dir names a file: FAIL with how to fix it; broker and later are skipped."""
    (tmp_path / "data").write_text("not a directory")
    async with bench(mosquitto) as b:
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert not ok
    assert by_status(findings)[2] == ("data", Status.FAIL)
    assert "not a directory" in findings[2].detail
    assert "data_dir" in findings[2].fix
    assert {f.status for f in findings[3:]} == {Status.SKIPPED}


@pytest.mark.asyncio
async def test_a_broken_journal_chain_fails_the_data_dir_check(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A journal whose row 2 was altered: FAIL naming the row."""
    async with await AsyncJournal.open(tmp_path / "data", gateway_id="gw-doctor") as journal:
        for i in range(3):
            await journal.append(JournalKind.VERDICT, {"i": i}, pump_id="pump-1", ts=T0)
    with sqlite3.connect(journal_path(tmp_path / "data")) as conn:
        conn.execute("UPDATE journal SET ts='2020-01-01T00:00:00.000Z' WHERE n=2")
    async with bench(mosquitto) as b:
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert not ok
    assert by_status(findings)[2] == ("data", Status.FAIL)
    assert "broken at row 2" in findings[2].detail


@pytest.mark.asyncio
async def test_an_intact_journal_is_verified(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """An existing journal's chain is walked and its row count reported."""
    async with await AsyncJournal.open(tmp_path / "data", gateway_id="gw-doctor") as journal:
        await journal.append(JournalKind.VERDICT, {"i": 0}, pump_id="pump-1", ts=T0)
    async with bench(mosquitto) as b:
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert ok
    assert "journal ok (1 rows)" in findings[2].detail
    assert "not in use" in findings[2].detail


@pytest.mark.asyncio
async def test_a_broker_that_refuses_connections_fails_with_a_hint(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Nothing listens at [broker].url: `connection refused — is the broker running?`."""
    with refused_port() as port:
        async with bench(mosquitto) as b:
            b.broker_url = f"mqtt://127.0.0.1:{port}"
            ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert not ok
    broker = findings[3]
    assert (broker.check, broker.status) == (f"broker mqtt://127.0.0.1:{port}", Status.FAIL)
    assert broker.detail == "connection refused"
    assert "running" in broker.fix
    assert "[broker].url" in broker.fix
    assert {f.status for f in findings[4:]} == {Status.SKIPPED}


@pytest.mark.asyncio
async def test_wrong_broker_credentials_fail_naming_the_keys(tmp_path: Path) -> None:
    """A broker with a password file refuses our user: FAIL pointing at username/password."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "gw-user", "right-pw"],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    user = pwd.getpwuid(os.geteuid()).pw_name
    broker = Mosquitto(tmp_path / "auth", extra_conf=[f"user {user}", f"password_file {passwd}"])
    broker.start()
    try:
        async with bench(broker) as b:
            extra = 'username = "gw-user"\npassword = "wrong-pw"'
            ok, findings = await doctor(tmp_path, config_text(tmp_path, b, extra_broker=extra))
    finally:
        broker.stop()
    assert not ok
    assert by_status(findings)[3] == ("broker", Status.FAIL)
    assert "refused the credentials" in findings[3].detail
    assert "wrong-pw" not in findings[3].line()
    assert "username and password" in findings[3].fix


@pytest.mark.asyncio
async def test_a_modbus_pump_that_is_not_there_fails(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """pump-1's port refuses: FAIL `cannot connect` pointing at pumps[0].url; pump-2 skipped."""
    with refused_port() as port:
        async with bench(mosquitto) as b:
            b.modbus_url = f"tcp://127.0.0.1:{port}"
            ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert not ok
    pump = findings[4]
    assert pump.check == f"pump pump-1 (modbus tcp://127.0.0.1:{port})"
    assert pump.status is Status.FAIL
    assert "cannot connect" in pump.detail
    assert "pumps[0].url" in pump.fix
    assert [f.status for f in findings[5:]] == [Status.SKIPPED, Status.SKIPPED]


@pytest.mark.asyncio
async def test_a_new_era_pump_that_does_not_answer_times_out(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The New Era port answers nothing at address 0 (the simulated pump is at 5): FAIL after
    the timeout, pointing at address and baudrate."""
    newera = NewEraSimulator([NewEraPumpSetup(address=5, reset_alarm=False)])
    async with bench(mosquitto) as b, newera.serving("tcp://127.0.0.1:0"):
        b.newera_url = newera.url
        ok, findings = await doctor(tmp_path, config_text(tmp_path, b))
    assert not ok
    pump = findings[5]
    assert pump.check.startswith("pump pump-2 (newera socket://")
    assert pump.status is Status.FAIL
    assert "pumps[1]" in pump.fix
    assert "address" in pump.fix


@pytest.mark.asyncio
async def test_a_vitals_port_held_by_another_program_fails(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Another program listens on the MLLP port: FAIL `in use by another program`."""
    with taken_port() as port:
        async with bench(mosquitto) as b:
            text = config_text(tmp_path, b, vitals=f"mllp://127.0.0.1:{port}")
            ok, findings = await doctor(tmp_path, text)
    assert not ok
    vitals = findings[-1]
    assert vitals.status is Status.FAIL
    assert f"port {port} is in use by another program" == vitals.detail
    assert "vitals[0].listen" in vitals.fix


@pytest.mark.asyncio
async def test_a_vitals_peer_is_reached_or_reported_unreachable(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`connect` sources: a listening peer is `ok`, a refusing one FAILs naming the key."""
    with taken_port() as up, refused_port() as down:
        async with bench(mosquitto) as b:
            good = config_text(tmp_path, b, vitals=f"mllp://127.0.0.1:{up}", vitals_key="connect")
            ok, findings = await doctor(tmp_path, good)
            assert ok, [f.line() for f in findings]
            assert "accepts connections" in findings[-1].detail
            bad = config_text(tmp_path, b, vitals=f"mllp://127.0.0.1:{down}", vitals_key="connect")
            ok, findings = await doctor(tmp_path, bad)
    assert not ok
    assert findings[-1].status is Status.FAIL
    assert "vitals[0].connect" in findings[-1].fix


def test_the_command_prints_one_json_object_per_check_and_exits_1(tmp_path: Path) -> None:
    """`infusiond doctor --json` on an invalid config: a FAIL object with its fix, then
    `skipped` objects; exit 1, nothing on stderr."""
    path = tmp_path / "bad.toml"
    path.write_text('gateway_id = "bad id"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "doctor", "--config", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr) == (1, "")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["status"] == "FAIL"
    assert lines[0]["check"] == f"config {path}"
    assert "gateway_id" in lines[0]["detail"]
    assert lines[0]["fix"]
    assert {line["status"] for line in lines[1:]} == {"skipped"}


PHD_PUMP = """
[[pumps]]
id = "pump-phd"
driver = "phd"
url = "{url}"
syringe_diameter_mm = {diameter}
drug = "norepinephrine"
concentration = {{ value = 16, unit = "ug/mL" }}
diluent = "D5W"
route = "central"
library_profile = "adult-icu"
weight_kg = 70
"""


@pytest.mark.asyncio
async def test_a_phd_pump_is_read_and_a_wrong_syringe_fails(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A PHD ULTRA with the configured syringe is `ok`; configured with another diameter, the
    doctor FAILs with the pump's own diameter and the advice to check the syringe."""
    phd = PhdSimulator([PhdPumpSetup(address=0, rate_ml_h=Decimal(9), running=True)])
    async with bench(mosquitto) as b, phd.serving("tcp://127.0.0.1:0"):
        base = config_text(tmp_path, b)
        ok, findings = await doctor(tmp_path, base + PHD_PUMP.format(url=phd.url, diameter=26.59))
        assert ok, [f.line() for f in findings]
        phd_line = next(f for f in findings if f.check.startswith("pump pump-phd"))
        assert "infusing" in phd_line.detail
        ok, findings = await doctor(tmp_path, base + PHD_PUMP.format(url=phd.url, diameter=20))
    assert not ok
    phd_line = next(f for f in findings if f.check.startswith("pump pump-phd"))
    assert phd_line.status is Status.FAIL
    assert "holds a 26.5900 mm syringe, configured 20.0 mm" in phd_line.detail
    assert "pumps[2].syringe_diameter_mm" in phd_line.fix


HOLD_LOCK = """
import sys
from pathlib import Path
from daemon.base.paths import lock_data_dir
with lock_data_dir(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def running_daemon(data_dir: Path) -> Iterator[int]:
    """A process holding the data dir's lock the way `infusiond run` does; yields its pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        try:
            assert proc.stdout.readline() == b"locked\n"
            yield proc.pid
        finally:
            proc.stdin.close()  # the holder exits when its stdin ends
            proc.wait(timeout=30)
            proc.stdout.close()


@pytest.mark.asyncio
async def test_a_running_daemon_is_reported_and_its_listener_port_is_not_a_failure(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """With another process holding the journal's lock, the data dir line says a daemon runs
    (with its pid), the New Era pump's line and the monitor gateway it is a client of are left
    to it, and the MLLP port it listens on is `ok`, not "in use by another program"."""
    (tmp_path / "data").mkdir()
    with running_daemon(tmp_path / "data") as pid, taken_port() as port, refused_port() as down:
        async with bench(mosquitto) as b:
            peer = f"mllp://127.0.0.1:{down}"
            text = config_text(tmp_path, b, vitals=peer, vitals_key="connect")
            ok, findings = await doctor(tmp_path, text)
            assert ok, [f.line() for f in findings]
            assert findings[-1].detail == "not contacted: the running infusiond is its client"
            text = config_text(tmp_path, b, vitals=f"mllp://127.0.0.1:{port}")
            ok, findings = await doctor(tmp_path, text)
    assert ok, [f.line() for f in findings]
    assert f"in use by a running infusiond (pid {pid})" in findings[2].detail
    modbus, newera = findings[4], findings[5]
    assert "infusing" in modbus.detail  # Modbus TCP: the read is safe beside the daemon
    assert newera.detail == "not opened: the running infusiond owns this serial line"
    assert findings[-1].detail == f"port {port} in use, by the running infusiond (pid {pid})"


def tls_config(tmp_path: Path, broker: ShippedBroker, ca: Path, password: str) -> str:
    user = f"infusiond-{GW}"
    return f"""
gateway_id = "{GW}"
data_dir = "{tmp_path / "data"}"

[broker]
url = "{broker.url}"
username = "{user}"
password = "{password}"

[broker.tls]
ca_file = "{ca}"
"""


@pytest.mark.asyncio
async def test_the_broker_check_uses_the_configured_tls_and_credentials(
    tmp_path: Path, secured_broker: ShippedBroker
) -> None:
    """Against the shipped TLS + ACL broker: the right CA and password pass (`TLS, as ...`);
    a CA that did not sign the broker's certificate FAILs as a TLS problem naming ca_file."""
    broker = secured_broker
    right_password = PASSWORDS[f"infusiond-{GW}"]
    ok, findings = await doctor(
        tmp_path, tls_config(tmp_path, broker, broker.etc / "ca.pem", right_password)
    )
    assert ok, [f.line() for f in findings]
    assert f"TLS, as infusiond-{GW}" in findings[3].detail
    other = tmp_path / "other-ca"
    other.mkdir()
    wrong_ca, _crt, _key = make_certificates(other)
    ok, findings = await doctor(tmp_path, tls_config(tmp_path, broker, wrong_ca, right_password))
    assert not ok
    assert findings[3].status is Status.FAIL
    assert "TLS handshake failed" in findings[3].detail
    assert "[broker.tls].ca_file" in findings[3].fix
