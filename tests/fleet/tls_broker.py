"""A central broker as production runs it for the fleet: the shipped TLS + password + ACL
mosquitto configuration (tests/security's :class:`ShippedBroker`), here also requiring a client
certificate, with certificates made by openssl in the test's directory."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.security.test_broker_tls_acl import SHIPPED_ACL, ShippedBroker, make_certificates
from tests.support.procs import free_port


def make_client_certificate(directory: Path, ca: Path, name: str) -> tuple[Path, Path]:
    """A client certificate (CN ``name``) signed by ``ca`` (its key beside it, as
    :func:`make_certificates` leaves it); returns (certificate, key)."""
    ca_key = ca.with_suffix(".key")
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    new_key = ["-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    sign = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1"]
    for step in (
        ["req", *new_key, "-out", str(csr), "-subj", f"/CN={name}"],
        ["x509", "-req", "-in", str(csr), *sign, "-out", str(crt)],
    ):
        subprocess.run(["openssl", *step], check=True, capture_output=True)
    return crt, key


@dataclass
class CertBroker(ShippedBroker):
    """The shipped TLS + ACL config with ``require_certificate true`` (the variant its
    comments describe): a client needs a certificate the broker's CA signed, and a password."""

    def config_text(self) -> str:
        text = super().config_text()
        assert "require_certificate false" in text
        return text.replace("require_certificate false", "require_certificate true")

    @property
    def ca(self) -> Path:
        return self.etc / "ca.pem"


@contextlib.contextmanager
def cert_broker(workdir: Path, logins: dict[str, str], gateway: str) -> Iterator[CertBroker]:
    """A running :class:`CertBroker` holding ``logins`` (user -> password), the shipped ACL
    for ``gateway``."""
    etc = workdir / "etc"
    etc.mkdir(parents=True)
    make_certificates(etc)
    passwd = etc / "passwd"  # written in clear, then hashed in place by mosquitto_passwd -U
    passwd.write_text("".join(f"{user}:{password}\n" for user, password in logins.items()))
    passwd.chmod(0o600)
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    acl = SHIPPED_ACL.read_text().replace("bed-12-gw", gateway)
    (etc / "infusiond.acl").write_text(acl)
    with contextlib.ExitStack() as cleanup:
        broker = CertBroker(workdir / "mosquitto", port=free_port(), etc=etc)
        cleanup.callback(broker.stop)  # also after a failed start: it may have half-started
        broker.start()
        yield broker
