"""Every subcommand and every option of `infusiond` explains itself in --help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from daemon.cli import build_parser


def walk(
    parser: argparse.ArgumentParser, path: str = "infusiond"
) -> Iterator[tuple[str, argparse.Action]]:
    """(command path, action) for every action of ``parser`` and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name}: subcommand without help"
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_and_positional_has_help_text() -> None:
    """Walking the whole argparse tree finds no option or argument without a help string."""
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in walk(build_parser())
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_the_walk_sees_the_whole_tree() -> None:
    """The walk reaches nested subcommands (guards against a walk that finds nothing)."""
    seen = {(path, "/".join(a.option_strings)) for path, a in walk(build_parser())}
    assert ("infusiond demo", "--gateway-id") in seen
    assert ("infusiond sim modbus", "--profile") in seen
    assert ("infusiond journal replay", "--broker") in seen
