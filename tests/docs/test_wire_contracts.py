"""docs/modbus.md, docs/newera.md and docs/hl7-vitals.md say what the data files the drivers
read say."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from decimal import Decimal

from drivers.hl7.oru import parse_oru
from drivers.modbus.regmap import PROFILES_DIR
from drivers.newera.frames import crc16_xmodem
from tests.docs.docs_text import DOCS, blocks

MODBUS = DOCS / "modbus.md"
NEWERA = DOCS / "newera.md"


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header line starts ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        inner = line.strip().removeprefix("|").removesuffix("|")
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)])
    return rows


def test_modbus_md_lists_every_register_of_the_profile_as_the_toml_defines_it() -> None:
    """One row per register, in address order: address span, name, type, access, scale and
    range exactly as in drivers/profiles/generic-pump-v1.toml (and nothing else)."""
    profile = tomllib.loads((PROFILES_DIR / "generic-pump-v1.toml").read_text(encoding="utf-8"))
    expected = []
    for name, reg in sorted(profile["registers"].items(), key=lambda kv: kv[1]["address"]):
        words = {"u16": 1, "bitfield": 1, "u32": 2}.get(reg["type"], reg.get("words", 1))
        first = reg["address"]
        span = str(first) if words == 1 else f"{first}-{first + words - 1}"
        scale = "" if reg["type"] in {"ascii", "bitfield"} else str(reg.get("scale", "1"))
        low, high = reg.get("min"), reg.get("max")
        limits = "" if low is None else f"{Decimal(str(low))}-{Decimal(str(high))}"
        expected.append([span, name, reg["type"], reg.get("access", "ro"), scale, limits])
    rows = table_rows(MODBUS.read_text(encoding="utf-8"), "| addr | name |")
    assert [row[:6] for row in rows] == expected


def test_modbus_md_names_every_status_alarm_command_and_result_code() -> None:
    """The meanings in the table use the profile's own names and numbers."""
    profile = tomllib.loads((PROFILES_DIR / "generic-pump-v1.toml").read_text(encoding="utf-8"))
    rows = {row[1]: row[6] for row in table_rows(MODBUS.read_text(encoding="utf-8"), "| addr |")}
    for value, name in profile["status_values"].items():
        assert f"{value} {name}" in rows["status"]
    for bit, name in profile["registers"]["alarms"]["bits"].items():
        assert f"{bit} {name}" in rows["alarms"]
    for name, value in profile["commands"].items():
        assert f"{value} {name.split('_')[0]}" in rows["command"].replace("apply rate", "apply")
    assert len(profile["results"]) == rows["last_result"].count(",") + 1


def newera_commands() -> list[dict[str, str]]:
    path = DOCS.parent / "drivers" / "newera" / "commands.toml"
    commands: list[dict[str, str]] = tomllib.loads(path.read_text(encoding="utf-8"))["commands"]
    return commands


def test_newera_md_documents_every_command_of_the_command_table() -> None:
    """Every command of drivers/newera/commands.toml has a row in docs/newera.md, and every
    row is a command of the table: the documented subset is the subset the driver speaks."""
    rows = table_rows(NEWERA.read_text(encoding="utf-8"), "| command |")
    documented = {re.sub(r"[^A-Z]", "", row[0].split(" ")[0].strip("`")) for row in rows}
    assert documented == {c["name"] for c in newera_commands()}


def test_newera_md_shows_the_safe_mode_test_vector_the_code_computes() -> None:
    """The CRC example in the page is what the driver's CRC-16/XMODEM gives."""
    text = NEWERA.read_text(encoding="utf-8")
    assert f"0x{crc16_xmodem(b'SAF0'):04X}" in text
    assert "02 08 53 41 46 30 55 43 03" in text


HL7 = DOCS / "hl7-vitals.md"


def test_hl7_vitals_md_lists_every_code_and_unit_of_the_code_table() -> None:
    """Every OBX-3 code (with its parameter, system, name and preference) and every unit with
    its aliases and range in drivers/hl7/codes.toml has its row, and no other row exists."""
    path = DOCS.parent / "drivers" / "hl7" / "codes.toml"
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    text = HL7.read_text(encoding="utf-8")
    expected = [
        [f"`{c['parameter']}`", f"`{e['code']}`", f"`{e['system']}`", e["name"], str(e["rank"])]
        for c in table["codes"]
        for e in c["entries"]
    ]
    assert table_rows(text, "| parameter | OBX-3 code |") == expected
    units = table_rows(text, "| unit (UCUM) |")
    assert [row[0] for row in units] == [f"`{u['ucum']}`" for u in table["units"]]
    for row, unit in zip(units, table["units"], strict=True):
        for alias in (*unit["aliases"], *unit["mdc"]):
            assert f"`{alias}`" in row[1]
        assert row[3] == f"{unit['range']['min']}-{unit['range']['max']}"


def test_the_sample_oru_message_is_accepted_with_all_five_values() -> None:
    """The sample message on the page parses: MAP, SBP, DBP, HR and SpO2 of bed-1."""
    (sample,) = [b for b in blocks(HL7) if b.lang == "text" and b.text.startswith("MSH|")]
    payload = sample.text.strip().replace("\n", "\r").encode()
    parsed = parse_oru(payload, now=datetime(2026, 11, 26, 10, 0, tzinfo=UTC))
    assert parsed.bed == "bed-1"
    assert {p.value for p in parsed.observations} == {"map", "sbp", "dbp", "hr", "spo2"}
