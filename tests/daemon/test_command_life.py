"""The life of an accepted command: it ends exactly once, in applied, failed or uncertain."""

from __future__ import annotations

import pytest

from daemon.base.results import ErrorCode, KeptOutcome, Phase
from daemon.core.command_life import CommandLife, CommandPhase, fingerprint, no_outcome_yet


@pytest.mark.parametrize("phase", ["applied", "failed", "uncertain"])
def test_an_accepted_command_ends_in_a_result_phase(phase: str) -> None:
    ended = CommandLife("c-1", deadline=10.0).end(Phase(phase))
    assert ended.phase is CommandPhase(phase)
    assert ended.deadline == 10.0


@pytest.mark.parametrize("phase", ["accepted", "rejected", "duplicate", "needs_confirmation"])
def test_anything_but_an_end_is_refused(phase: str) -> None:
    with pytest.raises(ValueError, match="c-1"):
        CommandLife("c-1", deadline=10.0).end(Phase(phase))


def test_an_ended_command_cannot_end_again() -> None:
    with pytest.raises(ValueError, match="applied -> failed"):
        CommandLife("c-1", deadline=10.0).end(Phase.APPLIED).end(Phase.FAILED)


def test_a_retry_or_a_confirmation_by_another_clinician_is_the_same_command() -> None:
    first = {
        "id": "c-1",
        "issued_at": "2026-12-06T00:00:00.000Z",
        "ttl_s": 30,
        "by": {"clinician": "nurse-1"},
        "action": "set_dose",
        "dose": {"value": 0.06, "unit": "ug/kg/min"},
    }
    again = {
        **first,
        "issued_at": "2026-12-06T00:00:05.000Z",
        "by": {"clinician": "dr-2"},
        "confirm": {"token": "t", "reason": "refractory shock"},
    }
    assert fingerprint(first) == fingerprint(again)
    other = {**first, "dose": {"value": 0.6, "unit": "ug/kg/min"}}
    assert fingerprint(first) != fingerprint(other)


def test_a_duplicate_is_told_the_pump_but_not_the_bookkeeping() -> None:
    stored = {
        "phase": "applied",
        "pump": "pump-1",
        "fingerprint": "abc",
        "before": {"status": "infusing", "rate": 52.5},
    }
    assert KeptOutcome.from_json(stored).first.to_json() == {"phase": "applied", "pump": "pump-1"}


def test_a_repeat_of_an_id_with_no_outcome_yet_is_busy_or_a_conflict() -> None:
    """No first outcome to tell: ``busy`` on the pump it was claimed for (or an unknown one),
    ``id_conflict`` on another pump."""
    assert no_outcome_yet("c-1", "pump-1", "pump-1").code is ErrorCode.BUSY
    assert no_outcome_yet("c-1", "pump-1", None).code is ErrorCode.BUSY
    conflict = no_outcome_yet("c-1", "pump-2", "pump-1")
    assert conflict.code is ErrorCode.ID_CONFLICT
    assert "pump-1" in conflict.message
