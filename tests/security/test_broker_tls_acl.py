"""The shipped broker configuration (systemd/mosquitto-tls-acl.conf + systemd/mosquitto.acl),
run by a real mosquitto with certificates made here by openssl: the gateway works over TLS
with its credentials, only the commanding role can reach a pump, everyone else is refused."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from tests.reliability.harness import (
    GW,
    NE_RATE_UP,
    REPO,
    bedside,
    command,
    probe,
    running_gateway,
    simulators,
)
from tests.support.procs import Mosquitto, free_port

SHIPPED_CONF = REPO / "systemd" / "mosquitto-tls-acl.conf"
SHIPPED_ACL = REPO / "systemd" / "mosquitto.acl"
PASSWORDS = {"infusiond-" + GW: "gw-secret-1", "titration-app": "cmd-secret-2", "dashboard": "ro-3"}


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1 (openssl, as an operator would)."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, crt = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-keyout"]
    steps: list[list[str | Path]] = [
        ["req", "-x509", *new_key, ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test-ca"],
        ["req", *new_key, key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out"],
        [crt, "-days", "1", "-extfile", ext],
    ]
    steps[2:] = [steps[2] + steps[3]]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return ca, crt, key


@dataclass
class ShippedBroker(Mosquitto):
    """mosquitto running the shipped config, paths and port rewritten to the test's."""

    etc: Path = Path()

    def config_text(self) -> str:
        text = SHIPPED_CONF.read_text()
        listener = f"listener {self.port} 127.0.0.1"
        text = re.sub(r"^listener 8883$", listener, text, flags=re.MULTILINE)
        text = text.replace("/etc/mosquitto/certs/", f"{self.etc}/").replace(
            "/etc/mosquitto/", f"{self.etc}/"
        )
        text = text.replace("/var/lib/mosquitto/", f"{self.workdir}/")
        # as root, mosquitto would drop to the `mosquitto` user, which cannot read pytest's
        # private tmp dirs; keep the invoking user, and log to stderr for readiness
        user = pwd.getpwuid(os.geteuid()).pw_name
        return text + f"\nuser {user}\nlog_dest stderr\nlog_type all\n"

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    etc = tmp_path / "etc"
    etc.mkdir()
    make_certificates(etc)
    passwd = etc / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    passwd.chmod(0o600)
    (etc / "infusiond.acl").write_text(SHIPPED_ACL.read_text().replace("bed-12-gw", GW))
    broker = ShippedBroker(tmp_path / "mosquitto", port=free_port(), etc=etc)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _client_kw(broker: ShippedBroker, user: str | None) -> dict[str, object]:
    kw: dict[str, object] = {
        "tls_params": aiomqtt.TLSParameters(ca_certs=str(broker.etc / "ca.pem"))
    }
    if user is not None:
        kw |= {"username": user, "password": PASSWORDS[user]}
    return kw


def test_shipped_config_has_no_plain_listener_and_denies_anonymous() -> None:
    """Every listener of the shipped config is TLS; anonymous access is off; an ACL is set."""
    text = SHIPPED_CONF.read_text()
    listeners = re.findall(r"^listener .*$", text, flags=re.MULTILINE)
    assert listeners == ["listener 8883"]
    assert re.search(r"^allow_anonymous false$", text, flags=re.MULTILINE)
    assert re.search(r"^acl_file ", text, flags=re.MULTILINE)
    assert re.search(r"^password_file ", text, flags=re.MULTILINE)


@pytest.mark.asyncio
async def test_gateway_over_tls_with_credentials_and_only_the_commander_role_reaches_a_pump(
    secured_broker: ShippedBroker, tmp_path: Path
) -> None:
    """The gateway connects over TLS with its password and publishes its tree (availability
    included); a dashboard (valid account, read-only role) publishing a command is dropped by
    the ACL: no result, no write at the pump; the titration-app role's command is applied."""
    broker = secured_broker
    async with simulators() as bench:
        cfg = bedside(
            bench,
            broker_url=broker.url,
            data_dir=tmp_path / "data",
            broker={
                "username": "infusiond-" + GW,
                "password": PASSWORDS["infusiond-" + GW],
                "tls": {"ca_file": str(broker.etc / "ca.pem")},
            },
        )
        async with (
            running_gateway(cfg) as gateway,
            probe(broker.url, **_client_kw(broker, "dashboard")) as viewer,
            probe(broker.url, **_client_kw(broker, "titration-app")) as commander,
        ):
            state = await viewer.wait_for(lambda m: m.topic.endswith("bridge/state"))
            assert state.json == {"state": "online"}
            await viewer.wait_for(lambda m: m.topic.endswith("pump/pump-1/state"))
            # the shipped ACL lets the gateway publish its pumps' availability
            await viewer.wait_for(
                lambda m: m.topic.endswith("pump/pump-1/availability") and m.payload == b"online"
            )

            forged = command(cid="from-dashboard")
            await viewer.send("pump-1", forged)  # QoS 1: the broker acks (0x87) and drops it
            legit = command(cid="from-commander")
            await commander.send("pump-1", legit)
            applied = await commander.result("from-commander", "applied")
            assert applied["readback"]["rate"]["value"] == float(NE_RATE_UP)
            await gateway.gate.drain()
            ids = {m.data.get("id") for m in viewer.messages if m.topic.endswith("result")}
            assert ids == {"from-commander"}
            assert not [m for m in viewer.messages if b"from-dashboard" in m.payload]
            # one command, one verified write sequence: the dashboard's never reached the pump
            assert bench.rate("pump-1") == NE_RATE_UP
            journal = json.dumps([r.payload for r in await gateway.journal.rows()])
            assert "from-commander" in journal
            assert "from-dashboard" not in journal


@pytest.mark.asyncio
async def test_anonymous_and_wrong_password_clients_are_refused(
    secured_broker: ShippedBroker,
) -> None:
    """No account or a wrong password: the TLS broker refuses the connection."""
    broker = secured_broker
    with pytest.raises(aiomqtt.MqttError):
        async with probe(broker.url, **_client_kw(broker, None)):
            pass
    kw = _client_kw(broker, "titration-app") | {"password": "guess"}
    with pytest.raises(aiomqtt.MqttError):
        async with probe(broker.url, **kw):
            pass


@pytest.mark.asyncio
async def test_a_plain_tcp_client_cannot_talk_to_the_tls_listener(
    secured_broker: ShippedBroker,
) -> None:
    """Credentials sent without TLS never get a session (the listener speaks TLS only)."""
    kw = {"username": "titration-app", "password": PASSWORDS["titration-app"], "timeout": 3}
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(10), probe(f"mqtt://127.0.0.1:{secured_broker.port}", **kw):
            pass
