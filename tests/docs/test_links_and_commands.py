"""Relative links in the docs lead somewhere, and every `infusiond ...` they show exists."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from daemon.cli import build_parser
from tests.docs.docs_text import ASYNCAPI, MARKDOWN, ROOT, anchors, blocks, code_spans, links, prose

# a command position: start of a line, or after a path (/opt/infusiond/bin/infusiond) or "("
_INVOCATION = re.compile(r"(?:^[ \t]*|(?<=[/(]))infusiond[ \t]+([^\n]*)", re.MULTILINE)
_SHELL_LANGS = {"", "sh", "console", "bash"}
_SHELL_STOP = {"&", "&&", "|", "||", ";", ">", ">>", "<", "\\", "#"}


def relative_links() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(ROOT)), target)
        for path in MARKDOWN
        for target in links(path)
        if not re.match(r"^[a-z]+:", target)
    ]


@pytest.mark.parametrize(("doc", "target"), relative_links())
def test_relative_link_points_to_an_existing_file_and_anchor(doc: str, target: str) -> None:
    """A relative link names an existing file (and, with #anchor, an existing heading)."""
    source = ROOT / doc
    path_part, _, anchor = target.partition("#")
    dest = (source.parent / path_part).resolve() if path_part else source
    assert dest.exists(), f"{doc}: {target} -> {dest} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{doc}: no heading #{anchor} in {dest.name}"


def test_the_guides_link_each_other_and_the_readme_links_them() -> None:
    """README's Documentation section links every guide, the API description and the reference."""
    readme = {t for d, t in relative_links() if d == "README.md"}
    for name in (
        "integration-guide.md",
        "biomed-guide.md",
        "operator-guide.md",
        "configuration.md",
        "asyncapi.yaml",
    ):
        assert f"docs/{name}" in readme


def invocations() -> list[tuple[str, str]]:
    """(where, the words after `infusiond`) for every invocation shown in code."""
    found = []
    for path in MARKDOWN:
        texts = [b.text for b in blocks(path) if b.lang in _SHELL_LANGS]
        texts += code_spans(prose(path))
        for text in texts:
            for line in text.splitlines():
                for match in _INVOCATION.finditer(line):
                    found.append((str(path.relative_to(ROOT)), match.group(1)))
    api = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    for text in code_spans(yaml.safe_dump(api, width=10_000)):
        for match in _INVOCATION.finditer(text):
            found.append(("docs/asyncapi.yaml", match.group(1)))
    return [(where, words) for where, words in found if words and words[0].isalpha()]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_invocation(words: str) -> None:
    """Walk the real parser: subcommands must exist, options must belong to the leaf."""
    parser = build_parser()
    tokens = words.split()
    leaf = False
    for raw in tokens:
        token = raw.strip("[]`'\",")
        if raw in _SHELL_STOP or token in _SHELL_STOP:
            break
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in parser._option_string_actions, f"unknown option {option} in {words}"
            continue
        subs = _subparsers(parser)
        if subs and not leaf:
            choices = token.split("|")
            assert all(c in subs for c in choices), f"unknown subcommand {token!r} in {words!r}"
            parser = subs[choices[0]]
        else:
            leaf = True  # a positional value or an option's value
    assert not _subparsers(parser) or leaf, f"incomplete command: infusiond {words}"


def test_docs_show_many_invocations() -> None:
    """The scan finds the commands the guides are about (guards against a broken regex)."""
    shown = {words.split()[0] for _, words in invocations()}
    assert {"sim", "journal", "library", "run", "demo", "watch", "check"} <= shown


@pytest.mark.parametrize(("where", "words"), invocations(), ids=lambda v: str(v)[:50])
def test_every_infusiond_invocation_exists_in_the_parser(where: str, words: str) -> None:
    """`infusiond <sub> [--option]...` shown in the docs parses with daemon.cli.build_parser."""
    check_invocation(words)


def test_a_made_up_subcommand_is_caught() -> None:
    """The checker itself refuses a subcommand and an option that do not exist."""
    with pytest.raises(AssertionError):
        check_invocation("journal rewind")
    with pytest.raises(AssertionError):
        check_invocation("sim modbus --no-such-option")
