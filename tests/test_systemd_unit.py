"""The shipped systemd unit is a hardened Type=notify service (exposure <= 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "infusiond.service"


def test_unit_is_type_notify_with_watchdog() -> None:
    """READY/WATCHDOG from the daemon only matter with Type=notify and WatchdogSec."""
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)
    assert re.search(r"^ExecStart=\S+infusiond run --config \S+$", text, re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_security_exposure_is_at_most_2() -> None:
    """`systemd-analyze security --offline=true` rates the unit 2.0 or lower."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0
