"""`infusiond config check` lists every problem with its TOML key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main

ROOT = Path(__file__).resolve().parents[2]

BAD = """
gateway_id = "bed 12"
[broker]
url = "http://broker"
keepalive_s = 2
[[pumps]]
id = "pump-1"
driver = "modbuss"
url = "tcp://127.0.0.1:5020"
drug = "norepinephrine"
concentration = { value = 4, unit = "ug/mL" }
diluent = "D5W"
route = "central"
library_profile = "adult-icu"
colour = "red"
"""


def test_every_problem_is_listed_with_its_key_and_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five problems in one file: five lines, each naming table.key and what is allowed;
    exit 1."""
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    assert main(["config", "check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"config {path}: 5 problem(s)"
    problems = {line.strip().split(": ", 1)[0]: line for line in lines[1:]}
    assert set(problems) == {
        "gateway_id",
        "broker.url",
        "broker.keepalive_s",
        "pumps[0].driver",
        "pumps[0].colour",
    }
    assert "greater than or equal to 5" in problems["broker.keepalive_s"]
    assert "'modbus', 'newera' or 'phd'" in problems["pumps[0].driver"]
    assert "mqtt://, mqtts://" in problems["broker.url"]
    assert "allowed here: id, driver, url" in problems["pumps[0].colour"]


def test_pumps_are_checked_against_the_library_as_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file whose pumps name an unknown profile and an unknown drug: both listed."""
    text = (ROOT / "systemd" / "infusiond.example.toml").read_text(encoding="utf-8")
    text = text.replace('library_profile = "adult-icu"', 'library_profile = "adult-icuu"', 1)
    text = text.replace('drug = "vasopressin"', 'drug = "vasopresin"', 1)
    path = tmp_path / "lib.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["config", "check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "pumps[0].library_profile: 'adult-icuu' is not a profile" in out
    assert "pumps[1].drug: 'vasopresin' is not in library profile" in out


def test_the_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """systemd/infusiond.example.toml passes: exit 0 and one `ok` line."""
    path = ROOT / "systemd" / "infusiond.example.toml"
    assert main(["config", "check", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"config {path}: ok (gateway bed-12-gw")


def test_a_missing_file_is_one_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist: exit 1 naming it."""
    assert main(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "not found" in capsys.readouterr().out
