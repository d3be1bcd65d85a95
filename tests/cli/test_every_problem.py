"""`infusiond check` and `library check` list every problem, never "(and N more)"."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.command_parse import Rejection, parse_command
from protocol.library import DEFAULT_LIBRARY_PATH


def run_check(monkeypatch: pytest.MonkeyPatch, request: object) -> int:
    data = json.dumps(request).encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    return main(["check"])


def test_check_names_every_bad_field_on_its_own_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three unknown fields, a missing one and a quoted number: five lines, each naming its
    field, exit 2, nothing on stdout."""
    request = {
        "id": "cmd-1",
        "action": "set_dose",
        "by": {"clinician": "rn-1"},
        "now": "2026-11-26T10:00:00Z",
        "patient": {"weight_kg": "70"},
        "infusion": {
            "drug": "norepinephrine",
            "concentration": {"value": 4, "unit": "ug/mL"},
            "diluent": "D5W",
            "route": "central",
            "line_shares": [],
        },
        "requested": {"dose": {"value": 0.06, "unit": "ug/kg/min"}},
    }
    assert run_check(monkeypatch, request) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert "more" not in err
    assert all(line.startswith("infusiond check: ") for line in lines)
    named = {line.removeprefix("infusiond check: ").split(":")[0] for line in lines}
    assert {"id", "action", "by", "profile", "patient.weight_kg"} <= named


def test_library_check_lists_every_load_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library with misspelt key in two drugs gets one LIB_LOAD line for each."""
    text = DEFAULT_LIBRARY_PATH.read_text(encoding="utf-8")
    text = text.replace("dose_unit = ", "dose_units = ", 2)
    assert text.count("dose_units = ") == 2
    path = tmp_path / "lib.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["library", "check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "dose_units" in line]) == 2
    assert all(line.startswith("LIB_LOAD: ") for line in lines)
    assert not any("more)" in line for line in lines)


def test_an_mqtt_command_with_two_bad_fields_names_both() -> None:
    """A command missing `by` with a negative dose: one bad_request naming both fields."""
    payload = json.dumps(
        {
            "id": "x1",
            "issued_at": "2026-11-26T10:00:00Z",
            "ttl_s": 30,
            "action": "set_dose",
            "dose": {"value": -1, "unit": "ug/kg/min"},
        }
    ).encode()
    result = parse_command(payload, now=datetime(2026, 11, 26, 10, 0, 1, tzinfo=UTC))
    assert isinstance(result, Rejection)
    assert result.code.value == "bad_request"
    assert result.message.split("; ") == [
        "by: required field missing",
        "dose.value: Input should be greater than or equal to 0",
    ]
