"""``infusiond report`` on the journal of a scripted session of known commands (real
mosquitto, real gateway, simulators, real journal): its counts are the session's."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from tests.e2e.harness import command, dose
from tests.pharmacy.harness import Ward, running_ward
from tests.pharmacy.test_reload import titrate
from tests.support.procs import Mosquitto
from tests.web.chromium import CHROMIUM, chromium_page, navigate

REASON = "MAP 92 on two readings; weaning per ICU protocol"


async def applied(ward: Ward, cmd_id: str) -> None:
    await ward.watch.result(cmd_id, "applied")


async def scripted_session(ward: Ward) -> dict[str, str]:
    """pump-1 (norepinephrine): accepted, hard rejection then accepted (a catch), a drop that
    needs confirmation then the override with its reason; pump-2 (vasopressin): accepted;
    then a front-panel change on pump-1 below the soft minimum."""
    ids: dict[str, str] = {}
    first = await titrate(ward, 0.06)
    assert first["phase"] == "accepted"
    await applied(ward, first["id"])
    bad = await titrate(ward, 3.5)
    assert bad["phase"] == "rejected"
    assert "HARD_MAX" in {f["rule"] for f in bad["verdict"]["findings"]}
    fixed = await titrate(ward, 0.07)
    assert fixed["phase"] == "accepted"
    await applied(ward, fixed["id"])
    ask = command(dose=dose(0.02))
    await ward.watch.send("pump-1", ask)
    asked = await ward.watch.result(ask["id"], "needs_confirmation")
    rules = sorted({f["rule"] for f in asked["verdict"]["findings"] if f["severity"] == "confirm"})
    await ward.watch.send(
        "pump-1", {**ask, "confirm": {"token": asked["confirm_token"], "reason": REASON}}
    )
    await applied(ward, ask["id"])
    vaso = command(dose=dose(0.02, "[USP'U]/min"))
    await ward.watch.send("pump-2", vaso)
    await applied(ward, vaso["id"])
    start = len(ward.watch.messages)
    ward.modbus.inject("front_panel_rate", 5.0, unit=1)
    await ward.watch.event("pump-1", "out_of_library_observed", after=start)
    await ward.watch.wait_for(
        lambda m: (
            m.topic.endswith("pump-1/event")
            and m.json()["data"]["type"] == "rate_changed"
            and m.json()["data"].get("source") == "device"
        ),
        after=start,
    )
    ids.update(rejected=bad["id"], caught_by=fixed["id"], override=ask["id"], rules=",".join(rules))
    return ids


async def report_while_running(data_dir: Path, *args: str) -> str:
    """Run `infusiond report` as its own process (no lock: the daemon holds the journal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.cli",
        "report",
        "--data-dir",
        str(data_dir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def by_key(summary: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["drug"], r["profile"]): r for r in summary}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_report_counts_equal_the_scripted_session(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON (read while the daemon runs) and CSV count exactly the session's programmings,
    verdicts, the override with its reason/clinician/rules, the catch, the front-panel change
    and the compliance that follows; HTML renders in Chromium with its text and charts."""
    async with running_ward(tmp_path, mosquitto, {"push_allowlist": []}) as ward:
        ids = await scripted_session(ward)
        data_dir = ward.gateway.config.data_dir
        live = json.loads(await report_while_running(data_dir, "--format", "json"))
    rows = by_key(live["summary"])
    ne = rows[("norepinephrine", "adult-icu")]
    assert {k: ne[k] for k in list(ne)[2:11]} == {
        "programmings": 4,
        "accepted_outright": 2,
        "confirmations_asked": 1,
        "overrides": 1,
        "hard_rejections": 1,
        "catches": 1,
        "observed_outside_library": 1,
        "rate_changes_gated": 3,
        "rate_changes_at_pump": 1,
    }
    assert ne["library_compliance"] == 0.75
    assert ne["alerts_per_100"] == 50.0
    assert ne["library_versions"] == ["vasopressors-example 2026.12.1"]
    vp = rows[("vasopressin", "adult-icu")]
    assert (vp["programmings"], vp["accepted_outright"], vp["library_compliance"]) == (1, 1, 1.0)
    total = rows[("(all)", "(all)")]
    assert (total["programmings"], total["hard_rejections"], total["catches"]) == (5, 1, 1)
    assert total["library_compliance"] == 0.8
    assert total["alerts_per_100"] == 40.0
    [override] = live["overrides"]
    assert override["reason"] == REASON
    assert override["clinician"] == "nurse-1"
    assert override["command_id"] == ids["override"]
    assert ",".join(override["rules"]) == ids["rules"]
    [catch] = live["catches"]
    assert (catch["rejected_command"], catch["accepted_command"]) == (
        ids["rejected"],
        ids["caught_by"],
    )
    assert catch["minutes"] < 10
    [seen] = live["observed_outside_library"]
    assert seen["pump_id"] == "pump-1"
    assert "SOFT_MIN" in seen["rules"]

    capsys.readouterr()  # the session's log lines
    assert main(["report", "--data-dir", str(data_dir), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    csv_ne = next(r for r in table if r["drug"] == "norepinephrine")
    assert (csv_ne["programmings"], csv_ne["catches"], csv_ne["library_compliance"]) == (
        "4",
        "1",
        "0.75",
    )
    assert table[-1]["drug"] == "(all)"

    out = tmp_path / "report.html"
    assert main(["report", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    html = out.read_text()
    assert "http://" not in html
    assert "https://" not in html
    # a change seen at the pump lists its rate number first, then its unit
    seen_rate = seen["rate"]
    assert f'<td class="text">{seen_rate["value"]} {seen_rate["unit"]}</td>' in html
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    async with chromium_page(tmp_path) as page:
        await navigate(page, out.as_uri())
        text = await page.evaluate("document.body.innerText")
        assert REASON in text
        assert "norepinephrine" in text
        assert "75.0 %" in text
        images = await page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth,"
            " i.naturalHeight, i.src.slice(0, 22)])"
        )
        assert len(images) == 3
        for alt, complete, width, height, src in images:
            assert complete, alt
            assert width > 300, alt
            assert height > 100, alt
            assert src == "data:image/png;base64,"
        cells = await page.evaluate(
            "Array.from(document.querySelectorAll('#summary tr')).map(r => r.innerText)"
        )
        assert any(c.startswith("(all)") for c in cells)
        assert page.console_errors == []


def test_report_refuses_a_bad_time_and_a_missing_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--from must be RFC 3339 with a zone or a date; no journal is a clear error (exit 1)."""
    assert main(["report", "--data-dir", str(tmp_path), "--from", "yesterday"]) == 1
    assert "--from: 'yesterday'" in capsys.readouterr().err
    assert main(["report", "--data-dir", str(tmp_path), "--format", "json"]) == 1
    assert "no journal" in capsys.readouterr().err


def test_bench_journal_verifies_and_its_report_counts_what_was_generated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bench's synthetic 90-day journal is a valid chain; the report counts its known mix
    (1 in 10 confirmed and overridden, 1 in 50 rejected then caught, a front-panel change and
    an out-of-library observation every 25th) and --from/--to cut it to a window."""
    from bench.report_bench import build_journal  # noqa: PLC0415 - bench code, this test only
    from daemon.journal import Journal  # noqa: PLC0415

    data = tmp_path / "data"
    # the density of the 200k-row bench (about 40 s between rows): rejections get caught
    build_journal(data, 5000, end=datetime(2026, 12, 1, tzinfo=UTC), span=timedelta(days=2))
    journal = Journal.open_readonly(data / "journal.sqlite3")
    try:
        assert journal.verify().ok
    finally:
        journal.close()
    capsys.readouterr()
    assert main(["report", "--data-dir", str(data), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    total = by_key(report["summary"])[("(all)", "(all)")]
    k = total["programmings"]
    assert total["hard_rejections"] == k // 50
    assert total["confirmations_asked"] == k // 10 - k // 50
    assert total["overrides"] == total["confirmations_asked"]
    assert total["catches"] == total["hard_rejections"]  # each is followed by an accepted dose
    assert total["observed_outside_library"] == total["rate_changes_at_pump"]
    assert (
        main(
            [
                "report",
                "--data-dir",
                str(data),
                "--format",
                "json",
                "--from",
                "2026-11-30T00:00:00Z",
                "--to",
                "2026-11-30T06:00:00Z",
            ]
        )
        == 0
    )
    day = json.loads(capsys.readouterr().out)
    assert 0 < by_key(day["summary"])[("(all)", "(all)")]["programmings"] < k / 4
    assert [d["date"] for d in day["daily"]] == ["2026-11-30"]
    assert day["first_row"] >= "2026-11-30T00:00:00.000Z"
    assert day["last_row"] < "2026-11-30T06:00:00.000Z"
