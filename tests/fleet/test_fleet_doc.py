"""docs/fleet.md shows the ward bridge configuration the fleet tests run and the collector's
shipped example configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli.app import build_parser
from daemon.cli.collect_cmd import PASSWORD_ENV, build_config
from tests.docs.docs_text import DOCS, ROOT, blocks
from tests.fleet.tls_broker import make_client_certificate
from tests.fleet.topology import ward_bridge_conf
from tests.security.test_broker_tls_acl import make_certificates

EXAMPLE = ROOT / "systemd" / "infusiond-fleet-collect.example.toml"


def test_the_documented_ward_bridge_is_the_tested_one() -> None:
    confs = [b.text.splitlines() for b in blocks(DOCS / "fleet.md") if b.lang == "conf"]
    assert ward_bridge_conf("central.hospital.example:1883", "ward-3") in confs


def test_the_operating_guide_names_every_table_of_the_schema() -> None:
    text = (DOCS / "fleet.md").read_text(encoding="utf-8")
    for table in ("events", "command_results", "pump_states", "gateways", "sessions", "gaps"):
        assert f"`{table}`" in text


def test_the_documented_collector_config_is_the_shipped_example_and_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/fleet.md shows systemd/infusiond-fleet-collect.example.toml as it is, and
    ``fleet collect --config`` accepts it (its files made here: a CA, a client certificate and
    key, the password file)."""
    shipped = EXAMPLE.read_text(encoding="utf-8")
    tomls = [b.text for b in blocks(DOCS / "fleet.md") if b.lang == "toml"]
    assert shipped in tomls
    ca, _crt, _key = make_certificates(tmp_path)
    cert, key = make_client_certificate(tmp_path, ca, "collector")
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    text = shipped
    for shown, made in {
        "/etc/infusiond/fleet/ca.pem": ca,
        "/etc/infusiond/fleet/collector.pem": cert,
        "/run/credentials/infusiond-fleet-collect.service/collector.key": key,
        "/run/credentials/infusiond-fleet-collect.service/mqtt-password": secret,
    }.items():
        assert shown in text
        text = text.replace(shown, str(made))
    path = tmp_path / "fleet-collect.toml"
    path.write_text(text)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    args = build_parser().parse_args(["fleet", "collect", "--config", str(path)])
    config, level = build_config(args)
    assert (config.host, config.port, config.client_id) == (
        "central.hospital.example",
        8883,
        "collector-a",
    )
    assert (config.username, config.password, level) == ("fleet-collector", "s3cret", "info")
    assert config.tls_context is not None
