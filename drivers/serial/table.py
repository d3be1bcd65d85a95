"""Command tables as data: ``[shapes]`` (named regular expressions) and ``[[commands]]`` rows.

Each vendor's TOML names, per command, the shape of its query reply, of its set parameters and
of the reply to a set; ``{NAME}`` placeholders are expanded from ``[shapes]``. The same table is
read by the driver (reply checks) and by the simulator (parameter checks).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of a table, with its shapes compiled."""

    name: str
    summary: str
    query: re.Pattern[str] | None
    set: re.Pattern[str] | None
    reply: re.Pattern[str] | None
    source: str = ""

    def reply_shape(self, params: str) -> re.Pattern[str] | None:
        """Shape of the reply data for this command sent with ``params``."""
        if params or self.query is None:
            return self.reply
        return self.query

    def accepts(self, params: str) -> bool:
        """Whether ``params`` have the shape the command takes."""
        if not params:
            return self.query is not None or self.set is None
        return self.set is not None and self.set.fullmatch(params) is not None


def read_toml(package: str, name: str) -> dict[str, Any]:
    """A TOML file shipped inside ``package``."""
    return tomllib.loads(resources.files(package).joinpath(name).read_text("utf-8"))


def load_commands(raw: dict[str, Any]) -> dict[str, CommandSpec]:
    """The ``[[commands]]`` of a parsed table, keyed by name, shapes expanded and compiled."""
    shapes: dict[str, str] = raw.get("shapes", {})

    def compile_shape(row: dict[str, str], key: str) -> re.Pattern[str] | None:
        if key not in row:
            return None
        return re.compile(row[key].format(**shapes))

    table: dict[str, CommandSpec] = {}
    for row in raw["commands"]:
        if row["name"] in table:
            raise ValueError(f"command table: {row['name']!r} listed twice")
        table[row["name"]] = CommandSpec(
            name=row["name"],
            summary=row["summary"],
            query=compile_shape(row, "query"),
            set=compile_shape(row, "set"),
            reply=compile_shape(row, "reply"),
            source=row.get("source", ""),
        )
    return table
