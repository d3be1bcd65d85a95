"""The command an interrupted id was claimed with, read once and typed at a restart
(``daemon.core.gate_restart.StoredCommand``): older stored commands keep settling from their
verdict; one naming an action this version does not know is a malformed row, named."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.base.errors import PayloadError
from daemon.base.results import KeptOutcome
from daemon.core.command_life import fingerprint
from daemon.core.gate_restart import StoredCommand
from daemon.journal.records import InterruptedCommand

ACCEPTED = KeptOutcome.from_json({"phase": "accepted"})


def _read(command: dict[str, Any] | None) -> StoredCommand:
    return StoredCommand.read(InterruptedCommand("c-1", "pump-1", ACCEPTED, command))


def test_a_command_as_received_is_read_with_its_action_and_fingerprint() -> None:
    command = {
        "id": "c-1",
        "issued_at": "2026-12-06T06:00:00.000Z",
        "by": {"clinician": "rn-1"},
        "action": "stop",
    }
    stored = _read(command)
    assert stored.action == "stop"
    assert stored.command is not None
    assert stored.command.id == "c-1"
    assert stored.fingerprint == fingerprint(command)


@pytest.mark.parametrize("command", [None, {}, {"id": "c-1", "v": 1}])
def test_an_older_stored_command_names_no_action_and_is_settled_from_its_verdict(
    command: dict[str, Any] | None,
) -> None:
    """Not recorded (an older version), or recorded without an action: no action, no parsed
    command, the fingerprint only when there was a command to take it from."""
    stored = _read(command)
    assert (stored.action, stored.command) == (None, None)
    assert stored.fingerprint == (fingerprint(command) if command else "")


def test_an_older_command_this_version_does_not_parse_keeps_its_action() -> None:
    stored = _read({"id": "c-1", "action": "start", "v": 1})
    assert (stored.action, stored.command) == ("start", None)


@pytest.mark.parametrize("action", ["bolus", 5, ["stop"]])
def test_an_unknown_action_is_a_malformed_row_named_by_its_field(action: object) -> None:
    with pytest.raises(PayloadError, match=r"commands\['c-1'\]\.command\.action: unknown action"):
        _read({"id": "c-1", "action": action})
