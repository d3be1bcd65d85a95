"""The README's `watch` screenshot is what watch draws for the demo bedside at 80 columns."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from daemon.watch import WatchModel, render

README = Path(__file__).resolve().parents[2] / "README.md"
NOW = datetime(2026, 12, 6, 18, 8, 44, tzinfo=UTC)
AT = "2026-12-06T18:08:44.000Z"


def env(kind: str, data: dict[str, Any], seq: int = 2) -> bytes:
    body = {"schema": f"infusiond.{kind}/1", "gateway": "demo", "session": "s", "seq": seq}
    return json.dumps(body | {"ts": AT, "data": data}).encode()


def test_readme_watch_block_matches_the_renderer() -> None:
    """Every pump and bed line of the README block is a line of the real 80-column frame."""
    pattern = r"\$ \.venv/bin/infusiond watch .*?\n(.*?)```"
    block = re.search(pattern, README.read_text(), re.DOTALL)
    assert block is not None
    shown = [line for line in block[1].splitlines() if line.startswith(("pump", "bed"))]
    model = WatchModel()
    model.apply("infusiond/demo/bridge/state", b'{"state":"online"}')
    for pump, drug, dose, unit, rate in (
        ("pump-1", "norepinephrine", 0.05, "ug/kg/min", 52.5),
        ("pump-2", "vasopressin", 0.03, "[USP'U]/min", 9.0),
    ):
        state = {
            "connection": "online",
            "status": "infusing",
            "drug": drug,
            "alarms": [],
            "dose": {"value": dose, "unit": unit},
            "rate": {"value": rate, "unit": "mL/h"},
        }
        model.apply(f"infusiond/demo/pump/{pump}/state", env("pump.state", state))

    def reading(value: float, unit: str) -> dict[str, Any]:
        return {"value": value, "unit": unit, "at": AT}

    vitals = {"map": reading(75, "mm[Hg]"), "sbp": reading(105, "mm[Hg]"),
              "dbp": reading(60, "mm[Hg]"), "hr": reading(89, "/min"), "spo2": reading(96, "%"),
              "source": "hl7:INFUSIOND-SIM"}  # fmt: skip
    model.apply("infusiond/demo/vitals/bed-1/state", env("vitals.state", vitals))
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    console.print(render(model, NOW, width=80))
    drawn = [line.rstrip() for line in console.export_text().splitlines()]
    assert len(shown) == 5
    for line in shown:
        assert line in drawn, (line, drawn)
