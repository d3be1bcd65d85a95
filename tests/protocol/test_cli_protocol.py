"""`infusiond check` and `infusiond library check` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocol.library import DEFAULT_LIBRARY_PATH
from tests.protocol.builders import dose, make

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def infusiond(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_check_prints_the_verdict_json() -> None:
    """The demo titration on stdin -> accept at 63.0 mL/h on stdout, exit 0."""
    req = make(others=[{"drug": "vasopressin", "dose": dose("0.03", "[USP'U]/min")}])
    proc = infusiond("check", stdin=json.dumps(req))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "accept"
    assert out["rate"] == {"value": 63.0, "unit": "mL/h"}
    assert out["dose"] == {"value": 0.06, "unit": "ug/kg/min"}
    assert set(out["library"]) == {"name", "version", "sha256"}
    assert out["library"]["name"] == "vasopressors-example"


def test_check_exits_0_for_a_reject_verdict() -> None:
    """A reject is an answer, not an error: exit 0 with the findings."""
    proc = infusiond("check", stdin=json.dumps(make(new="3.5")))
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["verdict"] == "reject"
    hard = next(f for f in out["findings"] if f["rule"] == "HARD_MAX")
    assert hard["severity"] == "reject"
    assert hard["limit"] == {"value": 3.0, "unit": "ug/kg/min"}
    assert hard["observed"] == {"value": 3.5, "unit": "ug/kg/min"}
    assert "hard maximum" in hard["message"]


def test_check_malformed_input_exits_2_naming_the_field() -> None:
    """Bad JSON or a bad field: exit 2, nothing on stdout, the field named on stderr."""
    proc = infusiond("check", stdin="{not json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "not valid JSON" in proc.stderr
    bad = json.dumps(make()).replace('"value": 0.06', '"value": NaN')
    proc = infusiond("check", stdin=bad)
    assert proc.returncode == 2
    assert "requested.dose.value: must be a finite number" in proc.stderr


def test_check_with_library_override(tmp_path: Path) -> None:
    """--library uses another file; its identity appears in the verdict."""
    proc = infusiond(
        "check", "--library", str(DATA / "reference_claim.toml"), stdin=json.dumps(make())
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["library"]["name"] == "reference-claim-fixture"
    missing = infusiond("check", "--library", str(tmp_path / "none.toml"), stdin="{}")
    assert missing.returncode == 1
    assert "cannot read library file" in missing.stderr


def test_library_check_ok_on_the_shipped_library() -> None:
    """The shipped library passes: exit 0, one OK line with name, version, sha256."""
    proc = infusiond("library", "check")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("OK: vasopressors-example 2026.12.1 sha256=")
    explicit = infusiond("library", "check", str(DEFAULT_LIBRARY_PATH), "--json")
    assert explicit.returncode == 0
    out = json.loads(explicit.stdout)
    assert out["ok"] is True
    assert out["problems"] == []
    assert out["library"]["name"] == "vasopressors-example"


def test_library_check_flags_the_reference_claim() -> None:
    """The fixture with the reference's '0.5 mg/h' claim gets a LIB_ line and exit 1."""
    proc = infusiond("library", "check", str(DATA / "reference_claim.toml"))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("LIB_EXAMPLE_DOSE: ")
    assert "0.084 mg/h" in lines[0]
    as_json = json.loads(
        infusiond("library", "check", str(DATA / "reference_claim.toml"), "--json").stdout
    )
    assert as_json["ok"] is False
    assert [p["rule"] for p in as_json["problems"]] == ["LIB_EXAMPLE_DOSE"]


def test_library_check_broken_and_unloadable(tmp_path: Path) -> None:
    """One LIB_ line per problem; an unparsable file is a LIB_LOAD problem."""
    proc = infusiond("library", "check", str(DATA / "broken.toml"))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) >= 11
    assert all(line.split(":")[0].startswith("LIB_") for line in lines)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1"\n[[profiles]]\nid = "a"\nweigth_kg = 3\n')
    proc = infusiond("library", "check", str(bad))
    assert proc.returncode == 1
    assert proc.stdout.startswith("LIB_LOAD: ")
    assert "weigth_kg" in proc.stdout
