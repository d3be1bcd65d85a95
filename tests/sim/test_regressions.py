"""Targeted fault schedules: one per safety bug a hostile tester found, plus controls.

Each regression schedule is the shortest story of its bug. While the bug is open the test is an
expected failure (strict, ``raises=Violation``, and ``known`` names the invariant: breaking
another one is a plain failure); once fixed it is un-marked and pins the answers that show the
fix (so it cannot pass because its commands never ran). The controls exercise the same faults
in ways the gateway already handles, so that the harness is known not to cry wolf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import RunState
from tests.sim.adapter import shipped_library
from tests.sim.fakes import CrashPoint, Emitted, LinkFault, SimPump, Write
from tests.sim.harness import (
    Broker,
    Confirm,
    CrashAt,
    DeviceEvent,
    Failure,
    Fault,
    Heal,
    JournalFault,
    JournalHeal,
    Panel,
    Restart,
    Send,
    Step,
    Wait,
    initial_bags,
    run_schedule,
)
from tests.sim.invariants import Monitor, Sent, Violation


def holds(
    steps: Sequence[Step],
    *,
    known: str | None = None,
    answers: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Run the schedule; raise its Violation (with the schedule) if an invariant breaks.

    ``known``: the invariant this schedule is known to break before its fix; breaking any other
    one is a plain test failure, never an expected one. ``answers``: what the gateway must
    have answered each of these command ids (the phases in order, an error code after a colon,
    as :func:`run_schedule` reports them), so that a schedule passes for the right reason and
    not because its commands never ran."""
    got: dict[str, list[str]] = {}
    violation = run_schedule(steps, answers=got)
    if violation is not None:
        report = Failure(0, tuple(steps), violation).describe()
        if known is not None and violation.code != known:
            pytest.fail(f"expected {known} to be the broken invariant, got:\n{report}")
        raise Violation(violation.code, report)
    for cid, expected in (answers or {}).items():
        assert got.get(cid, []) == list(expected), f"{cid}: answered {got.get(cid)}"


# -- (1) a restart forgets the program ---------------------------------------------------------


def test_a_restart_keeps_the_program_so_a_titration_after_it_is_dosed_for_the_bag_hung() -> None:
    """stop, program norepinephrine 64 ug/mL, start, restart the daemon, set_dose 0.06
    ug/kg/min: the pump must get the rate for 64 ug/mL, and the reported dose be the truth."""
    holds(
        [
            Send("pump-1", "stop", "b1-stop"),
            Wait(2),
            Send("pump-1", "program", "b1-program", program="ne64"),
            Wait(2),
            Send("pump-1", "start", "b1-start"),
            Wait(2),
            Restart(),
            Wait(3),
            Send("pump-1", "set_dose", "b1-dose", value=0.06),
            Wait(3),
        ],
        answers={"b1-dose": ["accepted", "applied"]},
    )


# -- (2) commands that never end, or end as applied without having been sent ----------------


def test_a_command_to_a_pump_that_does_not_answer_its_pre_read_still_ends() -> None:
    """A write whose pre-read times out ends ``failed`` (the driver says nothing was sent),
    not silence, and the pump is not written."""
    holds(
        [
            Fault("pump-1", LinkFault.PREREAD_FAILS),
            Send("pump-1", "set_dose", "b2-dose", value=0.06),
            Wait(5),
            Heal("pump-1"),
            Wait(5),
        ],
        answers={"b2-dose": ["accepted", "failed:not_sent"]},
    )


def test_a_command_interrupted_before_its_write_is_never_reconciled_as_applied() -> None:
    """The daemon dies after set_dose 0.05 was claimed and marked as being sent, before it
    reaches the pump (which already runs 52.5 mL/h = 0.05): after the restart the command is
    reconciled ``failed`` (interrupted), not applied."""
    holds(
        [
            CrashAt("pump-1", CrashPoint.BEFORE_SEND),
            Send("pump-1", "set_dose", "b2-dose", value=0.05),
            Wait(5),
        ],
        answers={"b2-dose": ["accepted", "failed:interrupted"]},
    )


def test_a_command_lost_in_a_crash_before_its_claim_runs_when_sent_again() -> None:
    """The daemon dies after the pre-read of set_dose 0.06 was started, before the command was
    claimed (claim, verdict, accepted and the sending mark are one commit after the pre-read):
    nothing of it is journaled and nothing was answered, like a command still queued; sent
    again with the same id after the restart, it is a new command and runs (not a duplicate)."""
    holds(
        [
            CrashAt("pump-1", CrashPoint.BEFORE_WRITE),
            Send("pump-1", "set_dose", "b2-lost", value=0.06),
            Wait(3),
            Send("pump-1", "set_dose", "b2-lost", value=0.06),
            Wait(3),
        ],
        answers={"b2-lost": ["accepted", "applied"]},
    )


# -- (3) a device change during a journal fault is lost --------------------------------------


def test_a_front_panel_change_during_a_journal_fault_is_journaled_and_judged_once_it_recovers() -> (
    None
):
    """3,500 mL/h set at the pump while three commits fail with 'database or disk is full':
    once the journal recovers, rate_changed and out_of_library_observed are journaled."""
    holds(
        [
            Panel("pump-1", Decimal(3500)),
            JournalFault("commit", skip=0, count=3),
            Wait(3),
            JournalHeal(),
            Wait(5),
        ],
    )


# -- controls: the same kinds of faults, handled ----------------------------------------------


def test_titration_outage_restarts_and_a_silent_pump_keep_every_invariant() -> None:
    """Accepted titrations, a front-panel change within the library, a broker outage with a
    command queued, a clean restart, a crash, and a pump silent for 3 s: nothing breaks."""
    holds(
        [
            Send("pump-1", "set_dose", "c-dose", value=0.06),
            Wait(2),
            Panel("pump-2", Decimal("6.0")),
            Wait(2),
            Broker(up=False),
            Send("pump-1", "set_rate", "c-rate", value=60.0),
            Wait(3),
            Broker(up=True),
            Wait(2),
            Restart(),
            Wait(2),
            Restart(crash=True),
            Wait(3),
            Fault("pump-1", LinkFault.SILENT),
            Wait(3),
            Heal("pump-1"),
            Wait(3),
        ]
    )


def test_rejected_and_refused_writes_and_a_crash_after_the_write_keep_every_invariant() -> None:
    """An out-of-library dose (rejected), a write the pump refuses (failed), a read-back that
    times out (uncertain), a crash after a write reached the pump (reconciled), an occlusion
    alarm, and a power reset: every accepted command ends, nothing out of library is written."""
    holds(
        [
            Send("pump-1", "set_dose", "c-hard", value=3.2),
            Wait(1),
            Fault("pump-1", LinkFault.REFUSE),
            Send("pump-1", "set_dose", "c-refused", value=0.06),
            Wait(1),
            Fault("pump-1", LinkFault.READBACK_LOST),
            Send("pump-1", "set_dose", "c-lost", value=0.045),
            Wait(3),
            Heal("pump-1"),
            CrashAt("pump-2", CrashPoint.AFTER_WRITE),
            Send("pump-2", "set_dose", "c-crash", value=0.02),
            Wait(3),
            DeviceEvent("pump-1", "occlusion"),
            Wait(2),
            DeviceEvent("pump-2", "power_reset"),
            Wait(2),
        ]
    )


def test_the_harness_catches_a_gateway_that_writes_an_out_of_library_rate() -> None:
    """Sanity of I1: the check fires when a write beyond the hard limits reaches a pump (here
    the harness itself plays a rogue command through the monitor)."""

    monitor = Monitor(shipped_library(), initial_bags(), Path("/nonexistent"))
    monitor.on_send("rogue", Sent("pump-1", {"action": "set_rate"}, 0.0, None))
    pump = SimPump("pump-1", RunState.INFUSING, Decimal("52.5"))
    monitor.on_result(Emitted(0.0, "pump-1", {"id": "rogue", "phase": "accepted"}), {})
    monitor.on_write(pump, Write(0.0, "set_rate", Decimal(3500), Decimal(3500), "rogue"))
    with pytest.raises(Violation, match=r"^I1: command rogue wrote pump-1: 3500 mL/h"):
        monitor.raise_first()


def test_the_harness_catches_a_reused_id_that_runs_on_the_other_pump() -> None:
    """Sanity of I3: an id accepted on pump-1 and then written to pump-2 (an id clash that
    ran) is a violation, even though it is that id's first write."""

    monitor = Monitor(shipped_library(), initial_bags(), Path("/nonexistent"))
    monitor.on_send("clash", Sent("pump-1", {"action": "set_rate"}, 0.0, None))
    pumps = {p: SimPump(p, RunState.INFUSING, Decimal("9.0")) for p in ("pump-1", "pump-2")}
    monitor.on_result(Emitted(0.0, "pump-1", {"id": "clash", "phase": "accepted"}), pumps)
    write = Write(0.0, "set_rate", Decimal(6), Decimal(6), "clash")
    monitor.on_write(pumps["pump-2"], write)
    with pytest.raises(Violation, match=r"^I3: command clash was written to pump-2 but accepted"):
        monitor.raise_first()


# -- found by the campaign (not among the three reported bugs) --------------------------------


def test_a_pump_running_in_reverse_still_has_its_rate_changes_journaled() -> None:
    """New Era 'W' (withdrawing) raises an alarm; a rate set at the panel meanwhile is still
    journaled as rate_changed."""
    holds(
        [
            DeviceEvent("pump-1", "withdrawing"),
            Panel("pump-1", Decimal("30.0")),
            Wait(3),
        ],
    )


def test_a_panel_rate_seen_in_a_stop_read_back_is_judged_not_credited_to_the_command() -> None:
    """3,500 mL/h of norepinephrine set at the panel as a stop arrives: the stop reads it back;
    the gateway must report it as out of library, not as the stop's own change."""
    holds(
        [
            Panel("pump-1", Decimal(3500)),
            Send("pump-1", "stop", "f2-stop"),
            Wait(3),
        ],
        answers={"f2-stop": ["accepted", "applied"]},
    )


def test_a_refusal_is_answered_even_when_the_journal_cannot_write_it() -> None:
    """An expired command while INSERTs fail with 'disk I/O error': it is still answered
    ``rejected`` (expired), and the gateway goes on."""
    holds(
        [
            JournalFault("write", skip=0, count=4, message="disk I/O error"),
            Send("pump-1", "pause", "f3-expired", age_s=45.0),
            Wait(1),
        ],
        answers={"f3-expired": ["rejected:expired"]},
    )


def test_a_start_before_the_first_poll_after_a_restart_is_checked_against_the_real_rate() -> None:
    """Vasopressin stopped, 3,500 mL/h set at the panel and seen, the daemon restarts, a start
    arrives at once: it is answered ``busy`` (the pump has not been read yet) and nothing is
    sent; the same start once the pump has been read is rejected by the library."""
    holds(
        [
            Send("pump-2", "stop", "f4-stop"),
            Wait(2),
            Panel("pump-2", Decimal(3500)),
            Wait(2),
            Restart(),
            Send("pump-2", "start", "f4-start"),
            Wait(2),
            Send("pump-2", "start", "f4-start-again"),
            Wait(2),
        ],
        answers={"f4-start": ["rejected:busy"], "f4-start-again": ["rejected"]},
    )


def test_a_dose_at_the_hard_maximum_is_rounded_toward_safety_before_it_is_written() -> None:
    """norepinephrine 64 ug/mL, set_dose 3.0 ug/kg/min (the hard max) confirmed over SOFT_MAX:
    the pump gets 196.87 mL/h, never 196.88."""
    holds(
        [
            Send("pump-1", "stop", "f5-stop"),
            Wait(0.3),
            Send("pump-1", "program", "f5-program", program="ne64"),
            Wait(1),
            Send("pump-1", "set_dose", "f5-dose", value=3.0),
            Wait(1),
            Confirm("pump-1", "f5-confirm"),
            Wait(1),
        ],
        known="I1",
    )


def test_a_journal_fault_while_reconciling_after_a_crash_does_not_stop_the_gateway() -> None:
    """A stop whose outcome could not be committed stays 'accepted'; the daemon crashes and,
    restarted, cannot commit the reconciled outcome: it keeps running and retries."""
    holds(
        [
            # the 2nd commit: after claim+accepted+"sending" (one commit), the stop's outcome
            JournalFault("commit", skip=1, count=1),
            Send("pump-2", "stop", "f6-stop"),
            Wait(0.3),
            Restart(crash=True),
            JournalFault("commit", skip=0, count=4, message="disk I/O error"),
            Wait(2.5),
        ],
        # the first commit the journal takes again is the reconciliation's, before any poll of
        # the pump was journaled: it cannot tell what the pump shows, so uncertain (never applied)
        answers={"f6-stop": ["accepted", "uncertain:journal_unavailable", "uncertain:interrupted"]},
    )


# -- found by the campaign against the rebuilt core -------------------------------------------


def test_a_rate_set_while_the_pump_was_unreachable_is_journaled_after_a_restart() -> None:
    """pump-1 stops answering (offline), 3,500 mL/h of norepinephrine is set at its panel, the
    daemon restarts and the pump answers again: rate_changed 52.5 -> 3,500 mL/h and
    out_of_library_observed are journaled."""
    holds(
        [
            Fault("pump-1", LinkFault.SILENT),
            Wait(2.5),
            Panel("pump-1", Decimal(3500)),
            Restart(),
            Heal("pump-1"),
            Wait(3),
        ],
        known="I4",
    )


def test_a_final_answer_journaled_just_before_a_crash_is_still_published_after_it() -> None:
    """pump-1's set_dose ends uncertain (its driver raises after the write) at the very moment
    the process dies at pump-2's write: after the restart the client still gets the end."""
    holds(
        [
            Fault("pump-1", LinkFault.RAISE_AFTER_WRITE),
            CrashAt("pump-2", CrashPoint.AFTER_WRITE),
            Send("pump-1", "set_dose", "g2-dose", value=0.045),
            Send("pump-2", "stop", "g2-stop"),
            Wait(0.3),
        ],
        known="I3",
    )


def test_a_panel_rate_seen_in_an_uncertain_read_back_is_journaled_before_the_next_command() -> None:
    """pump-1 in occlusion alarm; 3,500 mL/h set at its panel; a stop reads back 'alarm' (not
    stopped: uncertain) with 3,500 mL/h; a set_dose follows before the next poll: the
    3,500 mL/h change is journaled as rate_changed and judged out of library."""
    holds(
        [
            DeviceEvent("pump-1", "occlusion"),
            Wait(2.5),
            Panel("pump-1", Decimal(3500)),
            Send("pump-1", "stop", "g3-stop"),
            Wait(0.3),
            Send("pump-1", "set_dose", "g3-dose", value=0.04),
        ],
        known="I4",
    )


def test_a_stop_interrupted_before_its_write_is_not_applied_because_the_pump_reset() -> None:
    """A stop is accepted (and marked as being sent), the process dies before writing it, and
    the pump power-cycles (stopped, device_reset alarm) meanwhile: after the restart the stop is
    not reported applied (it is failed or uncertain: the pump stopped by itself)."""
    holds(
        [
            CrashAt("pump-2", CrashPoint.BEFORE_SEND),
            Send("pump-2", "stop", "g4-stop"),
            DeviceEvent("pump-2", "power_reset"),
            Wait(1),
        ],
        known="I2",
    )


def test_a_pump_not_read_in_one_run_keeps_its_last_known_rate_for_the_next() -> None:
    """pump-2 is read once (9 mL/h), then answers with another unit id through a restart (never
    read in that run), then the gateway crashes and the front panel sets 120 mL/h: the offline
    event of the run that could not read it carried the last known rate forward, so the next
    run reports 9 -> 120 as a change and judges it (found by the campaign, seed 2206)."""
    holds(
        [
            Fault("pump-2", LinkFault.WRONG_UNIT),
            Restart(),
            Wait(1.0),
            Restart(crash=True),
            Panel("pump-2", Decimal("120.0")),
        ],
        known="I4",
    )


def test_a_command_is_not_checked_against_a_state_the_journal_could_not_take() -> None:
    """The journal refuses writes while the front panel sets 3,500 mL/h: the poll cannot be
    journaled, so the channel still shows 52.5 mL/h; a start sent then is answered busy, never
    checked (and written) against that older state (campaign seed 26695)."""
    holds(
        [
            JournalFault("write", 0, 4, "database or disk is full"),
            Panel("pump-1", Decimal("3500.0")),
            Wait(2.5),
            Send("pump-1", "start", "j1-start"),
        ],
        known="I1",
    )


def test_a_change_undone_at_the_pump_during_a_journal_fault_is_still_reported() -> None:
    """3,500 mL/h, then the journal fails while the panel goes to 0.5 and back to 3,500: the
    excursion read during the fault is journaled, in order, once the journal takes writes
    (campaign seed 26289)."""
    holds(
        [
            Panel("pump-2", Decimal("3500.0")),
            Wait(2.5),
            JournalFault("write", 0, 4, "database or disk is full"),
            Panel("pump-2", Decimal("0.5")),
            Wait(2.5),
            Panel("pump-2", Decimal("3500.0")),
        ],
        known="I4",
    )


def test_a_stop_that_never_left_is_not_applied_although_the_pump_stopped_by_itself() -> None:
    """The gateway dies before the stop is sent while an occlusion stops the pump and is then
    cleared: the stop was not claimed yet (claim and "sending" mark are one commit after the
    pre-read), so after the restart nothing of it is journaled and it is never applied
    (campaign seed 26376)."""
    holds(
        [
            CrashAt("pump-1", CrashPoint.BEFORE_WRITE),
            DeviceEvent("pump-1", "occlusion"),
            Send("pump-1", "stop", "k1-stop"),
            DeviceEvent("pump-1", "clear"),
            Wait(0.3),
        ],
        known="I2",
    )


def test_a_claim_left_open_by_a_full_disk_is_settled_after_a_restart_without_stopping() -> None:
    """A command claimed, then its verdict lost to a full disk (answered ``rejected``
    journal_unavailable: nothing sent); the daemon restarts while the disk still refuses
    commits: it keeps running, settles the open claim once the journal takes it and publishes
    that ``rejected`` (internal_error: not executed), and a repeat of the id is then a
    ``duplicate`` (campaign seed 887: the start-up settlement's failed write stopped the
    gateway)."""
    holds(
        [
            JournalFault("commit", skip=2, count=2, message="database or disk is full"),
            Send("pump-2", "set_rate", "s887-5", value=999.99),
            Wait(1),
            Restart(crash=False),
            Wait(6),
            Send("pump-2", "set_rate", "s887-5", value=999.99),
            Wait(1),
        ],
        answers={
            "s887-5": ["rejected:journal_unavailable", "rejected:internal_error", "duplicate"]
        },
    )
