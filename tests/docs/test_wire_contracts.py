"""docs/modbus.md and docs/newera.md say what the data files the driver reads say."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal

from drivers.modbus.regmap import PROFILES_DIR
from drivers.newera.frames import crc16_xmodem
from tests.docs.docs_text import DOCS

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
