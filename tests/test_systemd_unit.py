"""The shipped systemd units: the daemon's is a hardened Type=notify service with a watchdog,
the fleet collector's a hardened Type=notify service reading its configuration and credentials
from /etc/infusiond/; both have an exposure <= 2.0 and pass ``systemd-analyze verify``."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "infusiond.service"
FLEET_UNIT = SYSTEMD / "infusiond-fleet-collect.service"
FLEET_EXAMPLE = SYSTEMD / "infusiond-fleet-collect.example.toml"
UNITS = [UNIT, FLEET_UNIT]
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing"
)


def test_unit_is_type_notify_with_watchdog() -> None:
    """READY/WATCHDOG from the daemon only matter with Type=notify and WatchdogSec."""
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)
    assert re.search(r"^ExecStart=\S+infusiond run --config \S+$", text, re.MULTILINE)


def test_fleet_unit_is_type_notify_reading_its_config_from_etc() -> None:
    """The collector sends READY=1 (Type=notify) but no watchdog pings: a WatchdogSec would
    have systemd kill a healthy collector. It runs unprivileged, restarted on failure."""
    text = FLEET_UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    assert re.search(r"^NotifyAccess=main$", text, re.MULTILINE)
    assert not re.search(r"^WatchdogSec=", text, re.MULTILINE)
    assert re.search(
        r"^ExecStart=\S+/infusiond fleet collect --config /etc/infusiond/fleet-collect\.toml$",
        text,
        re.MULTILINE,
    )
    assert re.search(r"^Restart=on-failure$", text, re.MULTILINE)
    assert re.search(r"^(DynamicUser=yes|User=\S+)$", text, re.MULTILINE)
    assert not re.search(r"^User=root$", text, re.MULTILINE)


def test_the_example_config_reads_its_secrets_from_the_units_credentials() -> None:
    """Every file the example reads from /run/credentials/<unit>/ is a LoadCredential= of the
    unit, taken from /etc/infusiond/; no password is in the example."""
    text = FLEET_UNIT.read_text()
    loaded = dict(re.findall(r"^LoadCredential=([^:\s]+):(\S+)$", text, re.MULTILINE))
    assert loaded
    assert all(source.startswith("/etc/infusiond/") for source in loaded.values())
    example = tomllib.loads(FLEET_EXAMPLE.read_text())
    assert "password" not in example["broker"]
    credentials = f"/run/credentials/{FLEET_UNIT.name}/"
    paths = [example["broker"]["password_file"], example["broker"]["tls"]["key_file"]]
    for path in paths:
        assert path.startswith(credentials)
        assert path.removeprefix(credentials) in loaded


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_security_exposure_is_at_most_2(unit: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit 2.0 or lower."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_finds_nothing(unit: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` reports no unknown key or bad value. The installed program
    is not on this machine, so ExecStart points at /bin/true in a copy; the rest is as
    shipped."""
    copy = tmp_path / unit.name
    text = unit.read_text()
    copy.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""
