"""The New Era command table (data in ``commands.toml``) and reply-shape checks."""

from __future__ import annotations

from drivers.errors import FrameError
from drivers.newera.frames import Command, Reply
from drivers.serial.table import CommandSpec, load_commands, read_toml

COMMANDS: dict[str, CommandSpec] = load_commands(read_toml("drivers.newera", "commands.toml"))


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
