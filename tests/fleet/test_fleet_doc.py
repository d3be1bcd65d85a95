"""docs/fleet.md shows the ward bridge configuration the fleet tests run."""

from __future__ import annotations

from tests.docs.docs_text import DOCS, blocks
from tests.fleet.topology import ward_bridge_conf


def test_the_documented_ward_bridge_is_the_tested_one() -> None:
    confs = [b.text.splitlines() for b in blocks(DOCS / "fleet.md") if b.lang == "conf"]
    assert ward_bridge_conf("central.hospital.example:1883", "ward-3") in confs


def test_the_operating_guide_names_every_table_of_the_schema() -> None:
    text = (DOCS / "fleet.md").read_text(encoding="utf-8")
    for table in ("events", "command_results", "pump_states", "gateways", "sessions", "gaps"):
        assert f"`{table}`" in text
