"""The New Era command table (data in ``commands.toml``) and reply-shape checks."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from drivers.errors import FrameError
from drivers.newera.frames import Command, Reply


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of the table, with its shapes compiled."""

    name: str
    summary: str
    query: re.Pattern[str] | None
    set: re.Pattern[str] | None
    reply: re.Pattern[str] | None

    def reply_shape(self, params: str) -> re.Pattern[str] | None:
        """Shape of the reply data for this command sent with ``params``."""
        if params or self.query is None:
            return self.reply
        return self.query

    def accepts(self, params: str) -> bool:
        """Whether ``params`` (normalised) have the shape the command takes."""
        if not params:
            return self.query is not None or self.set is None
        return self.set is not None and self.set.fullmatch(params) is not None


def _load() -> dict[str, CommandSpec]:
    raw: dict[str, Any] = tomllib.loads(
        resources.files("drivers.newera").joinpath("commands.toml").read_text("utf-8")
    )
    shapes: dict[str, str] = raw["shapes"]

    def compile_shape(row: dict[str, str], key: str) -> re.Pattern[str] | None:
        if key not in row:
            return None
        return re.compile(row[key].format(**shapes))

    table = {}
    for row in raw["commands"]:
        table[row["name"]] = CommandSpec(
            name=row["name"],
            summary=row["summary"],
            query=compile_shape(row, "query"),
            set=compile_shape(row, "set"),
            reply=compile_shape(row, "reply"),
        )
    return table


COMMANDS: dict[str, CommandSpec] = _load()


def check_reply(command: Command, reply: Reply) -> None:
    """FrameError unless ``reply.data`` has the shape ``command`` expects (or is an error)."""
    if reply.error is not None or (reply.alarm is not None and not reply.data):
        return
    spec = COMMANDS.get(command.name)
    shape = None if spec is None else spec.reply_shape(command.params)
    if shape is None or shape.fullmatch(reply.data) is None:
        raise FrameError(
            f"reply {reply.data!r} from pump {reply.address:02d} does not fit "
            f"{command.text()!r} (expected {shape.pattern if shape else 'no reply'!r})"
        )
