"""The command-line skeleton answers helpfully."""

from __future__ import annotations

import pytest

from daemon.cli import EXIT_USAGE, main


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`infusiond` alone shows usage on stderr and exits 2."""
    assert main([]) == EXIT_USAGE
    assert "usage: infusiond" in capsys.readouterr().err


def test_help_lists_every_contract_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every subcommand (run, demo, sim, check, library, journal, watch)."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "demo", "sim", "check", "library", "journal", "watch"):
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the installed distribution version."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("infusiond ")


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt subcommand exits 2 and names the valid choices."""
    with pytest.raises(SystemExit) as exc:
        main(["chek"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
