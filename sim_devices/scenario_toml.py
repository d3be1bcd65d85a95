"""Write a :class:`~sim_devices.scenario.Scenario` as TOML that loads back to the same scenario.

For scenarios built in code (a test rig, a generator of soak scenarios) that a simulator
started on the command line should play. The standard library reads TOML but does not write
it, and a scenario holds only scalars, one table and arrays of tables, so this writer is
short; strings are JSON strings, which are valid TOML basic strings once DEL is escaped.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sim_devices.scenario import Scenario

_TABLES = ("pumps", "doses", "events")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no TOML form in a scenario")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _key(name: str) -> str:
    return name if name.replace("_", "").isalnum() and name.isascii() else json.dumps(name)


def _pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]


def to_toml(scenario: Scenario) -> str:
    """The scenario as TOML text (``load_scenario_text`` reads it back unchanged)."""
    data = scenario.model_dump(exclude_none=True)
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if k not in (*_TABLES, "patient")]
    if data["patient"]:
        lines += [
            "",
            "[patient]",
            *(f"{_key(k)} = {_value(v)}" for k, v in data["patient"].items()),
        ]
    for table in _TABLES:
        for row in data[table]:
            lines += ["", f"[[{table}]]", *(f"{_key(k)} = {_value(v)}" for k, v in row.items())]
    return "\n".join(lines) + "\n"
