"""``infusiond sim KIND --scenario FILE`` refuses a bad or old-format file before serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.cli import main

OLD_MODBUS = "[scenario]\nname = 'old'\n[[events]]\nat_s = 60\nfault = 'occlusion'\nunit = 1\n"
OLD_PATIENT = "name = 'old'\n[[doses]]\nat_min = 2\nnorepinephrine = 0.1\n"


@pytest.fixture(autouse=True)
def _keep_structlog_config() -> Iterator[None]:
    """``sim modbus`` points structlog at the (captured) stderr: restore it for later tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("modbus", OLD_MODBUS, "the [scenario] table is gone"),
        ("modbus", OLD_MODBUS, "events[0].unit: write pump = 1"),
        ("newera", OLD_PATIENT, "doses[0].at_min: times are in seconds now: write at_s = 120"),
        ("phd", OLD_PATIENT, "write at_s = 120 for at_min = 2"),
        ("monitor", OLD_PATIENT, "write at_s = 120 for at_min = 2"),
        (
            "modbus",
            "name = 'x'\n[[events]]\nat_s = 1\npump = 4\naction = 'reset'\n",
            "events[0].pump: no simulated pump 4; unit ids are [1]",
        ),
        (
            "newera",
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'fault'\nfault = 'melt'\n",
            "events[0]: unknown fault 'melt' of the New Era simulator",
        ),
        (
            "phd",
            "name = 'x'\n[[events]]\nat_s = 1\naction = 'fault'\nfault = 'reject'\nvalue = 'No'\n",
            "events[0].value: reject 'No' is not an error reply",
        ),
    ],
)
def test_a_scenario_the_simulator_cannot_play_exits_2_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, text: str, message: str
) -> None:
    """Exit 2 with the file, the entry and how to fix it on stderr, before serving anything."""
    path = tmp_path / "s.toml"
    path.write_text(text)
    listen = "--to" if kind == "monitor" else "--listen"
    code = main(["sim", kind, listen, "tcp://127.0.0.1:9", "--scenario", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"infusiond sim {kind}: {path}: " in err
    assert message in err
