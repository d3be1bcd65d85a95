"""``infusiond watch`` in a real terminal (tmux) at 60, 100 and 160 columns against a real
mosquitto holding a retained bedside: the captured screen shows every dose with its whole unit,
whole pump ids, lines within the width, and after the gateway goes offline, pumps marked stale.

Each capture is saved as text in the test's tmp dir (``watch-<W>.txt``) for a person to read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Mosquitto

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (scripts/bootstrap.sh --test installs it)",
)

ROOT = Path(__file__).resolve().parents[2]
HEIGHT = 24
SCREEN_TIMEOUT_S = 30.0
TS = "2026-12-06T12:00:09.000Z"


def env(kind: str, data: dict[str, Any], seq: int = 7) -> str:
    body = {"schema": f"infusiond.{kind}/1", "gateway": "demo", "session": "s-1", "seq": seq}
    return json.dumps(body | {"ts": TS, "data": data})


def pump(drug: str, dose: float, unit: str, rate: float) -> str:
    return env(
        "pump.state",
        {
            "connection": "online",
            "status": "infusing",
            "rate": {"value": rate, "unit": "mL/h"},
            "dose": {"value": dose, "unit": unit},
            "drug": drug,
            "alarms": [],
        },
    )


BEDSIDE = {
    "infusiond/demo/bridge/state": '{"state":"online"}',
    "infusiond/demo/pump/pump-1/state": pump("norepinephrine", 0.066667, "ug/kg/min", 70.0),
    "infusiond/demo/pump/pump-2/state": pump("vasopressin", 0.033333, "[USP'U]/min", 10.0),
    "infusiond/demo/pump/icu-bed-12-pump-3/state": pump("norepinephrine", 0.05, "ug/kg/min", 52.5),
}


def publish(broker: Mosquitto, topic: str, payload: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-m", payload, "-r", "-q", "1"],
        check=True,
        timeout=10,
    )


class Terminal:
    """One tmux server of our own (its own socket), one session of W x H running a command."""

    def __init__(self, workdir: Path, width: int, command: list[str]) -> None:
        self.socket = str(workdir / f"tmux-{width}.sock")
        self.width = width
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
        self.tmux(
            "new-session", "-d", "-x", str(width), "-y", str(HEIGHT), "-s", "watch",
            " ".join(command), env=environment,
        )  # fmt: skip

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "watch")

    def wait_for(self, ready: Callable[[str], bool]) -> str:
        """The screen once ``ready`` holds for it (watch redraws at least every second)."""
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while True:
            text = self.screen()
            if ready(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never became ready:\n{text}")
            time.sleep(0.1)  # polling a terminal: there is no event to wait on

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], check=False, timeout=10)


@pytest.fixture
def bedside(mosquitto: Mosquitto) -> Mosquitto:
    for topic, payload in BEDSIDE.items():
        publish(mosquitto, topic, payload)
    return mosquitto


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def watch_command(broker: Mosquitto) -> list[str]:
    return [
        sys.executable,
        "-m",
        "daemon.cli",
        "watch",
        "--broker",
        broker.url,
        "--gateway",
        "demo",
    ]


@pytest.mark.parametrize("width", [60, 100, 160])
def test_watch_in_a_terminal_shows_whole_units_and_ids(
    width: int, bedside: Mosquitto, terminals: list[Terminal], tmp_path: Path
) -> None:
    """At 60, 100 and 160 columns: 0.0667 ug/kg/min and 0.0333 U/min whole, every pump id
    whole, no line past the width; from 100 columns the drug and rate columns are there too."""
    terminal = Terminal(tmp_path, width, watch_command(bedside))
    terminals.append(terminal)
    text = terminal.wait_for(lambda s: "icu-bed-12-pump-3" in s and "pump-2" in s)
    (tmp_path / f"watch-{width}.txt").write_text(text)
    lines = text.split("\n")
    assert max(len(line.rstrip()) for line in lines) <= width
    rows = {line.split()[0]: line for line in lines if line.startswith(("pump-", "icu-"))}
    assert set(rows) == {"pump-1", "pump-2", "icu-bed-12-pump-3"}
    assert "0.0667 ug/kg/min" in rows["pump-1"]
    assert "0.0333 U/min" in rows["pump-2"]
    assert "0.05 ug/kg/min" in rows["icu-bed-12-pump-3"]
    assert "…" not in "".join(rows.values())
    assert "demo online" in text
    if width >= 100:
        assert "norepinephrine" in rows["pump-1"]
        assert "70.00 mL/h" in rows["pump-1"]


def test_watch_marks_pumps_stale_when_the_gateway_goes_offline(
    bedside: Mosquitto, terminals: list[Terminal], tmp_path: Path
) -> None:
    """bridge/state turns offline (as the daemon's last will does): the pump lines stay, marked
    (stale), with the time of the last state; they no longer read online."""
    terminal = Terminal(tmp_path, 100, watch_command(bedside))
    terminals.append(terminal)
    terminal.wait_for(lambda s: "pump-2" in s)
    publish(bedside, "infusiond/demo/bridge/state", '{"state":"offline"}')
    text = terminal.wait_for(lambda s: "(stale)" in s)
    (tmp_path / "watch-offline.txt").write_text(text)
    row = next(line for line in text.split("\n") if line.startswith("pump-1"))
    assert "infusing (stale)" in row
    assert "online" not in row
    assert "last known state, 12:00:09Z" in text
