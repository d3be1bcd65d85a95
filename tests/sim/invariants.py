"""The safety invariants the simulator checks, from the devices' truth and the gateway's
public outputs (command results, the journal).

I1  no rate outside the library's hard limits (for the bag really hung: the last program the
    clinician saw ``applied``) or outside the pump's range reaches a pump through the gateway.
I2  ``applied`` only after a write that reached the device and a matching read-back, and the
    dose it reports is the dose of the bag really hung at the rate read back.
I3  every accepted command ends (applied | failed | uncertain, after a restart by
    reconciliation) within its ttl plus a grace period; no command is written to a device
    twice, and nothing is written that no command asked for; a command is written only to
    the pump it was accepted on, and one id is accepted on one pump only (a reused id on the
    other pump never runs; an id refused ``busy`` was never taken, so it may run elsewhere).
I4  every rate change made at the device that the gateway saw is journaled as a
    ``rate_changed`` event, plus ``out_of_library_observed`` when the new rate is outside the
    library's hard limits or the pump's range (across journal faults and restarts). "Saw" is
    the gateway's view: a rate it reads equal to the last rate it read is no change (set at
    the panel and back between two polls); and a change the journal refused when it was seen
    (journal first, state second: the channel keeps the last journaled truth and re-derives
    the change at the next poll) that the device replaced before that next poll can no longer
    be journaled, so it is excused and noted, never silently.
I5  the gateway does not exit, and none of its tasks dies unhandled, on a peer's fault.
I6  ``journal verify`` passes.

A broken invariant raises :class:`Violation`; its message starts with the invariant's id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from drivers.base import PumpStatus
from protocol.library import Library
from tests.sim.adapter import Program, dose_at, journal_events, journal_head, journal_verify
from tests.sim.fakes import CAPS, Emitted, SimPump, Write

END_GRACE_S = 30.0  # beyond the command's ttl, how long an accepted command may stay open
FINAL_PHASES = frozenset({"applied", "failed", "uncertain"})


class Violation(AssertionError):
    """A safety invariant does not hold; ``code`` is I1..I6."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Sent:
    """A command as the harness sent it."""

    pump_id: str
    body: dict[str, Any]
    at: float
    program: Program | None  # the bag a ``program`` command is for


@dataclass
class PanelChange:
    """A rate set at the pump's front panel."""

    pump_id: str
    rate: Decimal
    at: float
    journal_head: int
    out_of_library: bool
    seen: bool = False
    #: the gateway read this rate when it had last read the same one (no change in its view)
    unchanged: bool = False
    #: journal statements failed so far, when the gateway first read it / when it was replaced
    failures_seen: int = 0
    failures_replaced: int | None = None

    @property
    def lost_to_journal_fault(self) -> bool:
        """Replaced at the device after the journal refused a write that followed its sight."""
        return self.failures_replaced is not None and self.failures_replaced > self.failures_seen


@dataclass
class Monitor:
    """Collects what happens and checks I1-I6 against it."""

    library: Library
    bag: dict[str, Program]
    data_dir: Path
    #: how many journal statements the injected faults have failed so far
    journal_failures: Callable[[], int] = lambda: 0
    sent: dict[str, Sent] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)
    #: the pump each command was accepted on (an id refused busy is free for another pump)
    accepted_on: dict[str, str] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    final_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    panel: list[PanelChange] = field(default_factory=list)
    #: per pump: the panel change its rate comes from, the last rate the gateway read
    current_panel: dict[str, int] = field(default_factory=dict)
    last_read: dict[str, Decimal] = field(default_factory=dict)
    #: the journal row of the last program_changed event taken into the bag
    programs_read: int = 0
    last_restart: float = 0.0
    writes_by_command: dict[str, list[Write]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    # -- judging doses -----------------------------------------------------------------------

    def outside_library(self, program: Program, rate: Decimal) -> str | None:
        """Why ``rate`` of ``program`` is outside the hard limits or the pump's range."""
        if not CAPS.min_rate_ml_h <= rate <= CAPS.max_rate_ml_h:
            return (
                f"{rate} mL/h is outside the pump's range {CAPS.min_rate_ml_h}-{CAPS.max_rate_ml_h}"
            )
        drug = self.library.drug(program.profile, program.drug)
        dose = dose_at(program, rate)
        if drug is None or dose is None:
            return f"{program.drug} at {rate} mL/h cannot be judged by the library"
        if not drug.hard.min <= dose <= drug.hard.max:
            return (
                f"{rate} mL/h of {program.drug} {program.concentration} "
                f"{program.concentration_unit} is {dose:.5f} {program.dose_unit}, outside the "
                f"hard limits {drug.hard.min}-{drug.hard.max}"
            )
        return None

    def current_bag(self, pump_id: str) -> Program:
        """The bag hung on the pump: the last program the clinician was told took effect, by
        its ``applied`` answer or, for one answered ``uncertain``, by the ``program_changed``
        event the gateway journals when a later read shows that the write did happen (the
        contract's "uncertain: reconciled and reported by event"). Such an event must name a
        program command of ours whose write reached this pump."""
        events = journal_events(self.data_dir) if self.accepted else []
        for event in events:
            if event.n <= self.programs_read or event.event.get("type") != "program_changed":
                continue
            self.programs_read = event.n
            cid = event.event.get("command_id")
            sent = self.sent.get(cid) if isinstance(cid, str) else None
            if sent is None or sent.program is None or event.pump_id is None:
                continue
            if not self.writes_by_command.get(cid) or self.accepted_on.get(cid) != event.pump_id:
                raise Violation(
                    "I2",
                    f"{event.pump_id}: program_changed for command {cid}, which never reached it",
                )
            self.bag[event.pump_id] = sent.program
        return self.bag[pump_id]

    # -- hooks -------------------------------------------------------------------------------

    def on_send(self, sent_id: str, sent: Sent) -> None:
        self.sent.setdefault(sent_id, sent)

    def on_panel(self, pump: SimPump, rate: Decimal, at: float) -> int:
        self._replaced(pump.pump_id)
        why = self.outside_library(self.current_bag(pump.pump_id), rate)
        self.panel.append(
            PanelChange(pump.pump_id, rate, at, journal_head(self.data_dir), why is not None)
        )
        self.current_panel[pump.pump_id] = len(self.panel) - 1
        return len(self.panel) - 1

    def on_seen(self, pump: SimPump, status: PumpStatus) -> None:
        previous = self.last_read.get(pump.pump_id)
        self.last_read[pump.pump_id] = status.rate_ml_h
        if pump.panel_change is None:
            return
        change = self.panel[pump.panel_change]
        if not change.seen:
            change.seen = True
            change.unchanged = previous == status.rate_ml_h
            change.failures_seen = self.journal_failures()

    def _replaced(self, pump_id: str) -> None:
        """The pump's rate no longer comes from its last panel change."""
        index = self.current_panel.pop(pump_id, None)
        if index is not None:
            self.panel[index].failures_replaced = self.journal_failures()

    def on_write(self, pump: SimPump, write: Write) -> None:
        """Called inside the gateway's driver call: a violation is kept, not raised there."""
        try:
            self._on_write(pump, write)
        except Violation as violation:
            self.violations.append(violation)

    def on_result(self, result: Emitted, pumps: dict[str, SimPump]) -> None:
        """Called inside the gateway's send_result: a violation is kept, not raised there."""
        try:
            self._on_result(result, pumps)
        except Violation as violation:
            self.violations.append(violation)

    def raise_first(self) -> None:
        if self.violations:
            raise self.violations[0]

    def _on_write(self, pump: SimPump, write: Write) -> None:
        cid = write.command_id
        if cid is None:
            raise Violation(
                "I3", f"{pump.pump_id}: {write.op} written at t={write.at:.2f} by no command"
            )
        if write.op == "set_rate":
            self._replaced(pump.pump_id)
        where = self.accepted_on.get(cid)
        if where != pump.pump_id:  # an id clash ran, or a write nobody was told of
            raise Violation(
                "I3", f"command {cid} was written to {pump.pump_id} but accepted on {where}"
            )
        sent = self.sent.get(cid)
        earlier = self.writes_by_command.setdefault(cid, [])
        earlier.append(write)
        if len(earlier) > 1:
            ops = ", ".join(w.op for w in earlier)
            raise Violation("I3", f"command {cid} was written to {pump.pump_id} twice ({ops})")
        program = (
            sent.program if sent is not None and sent.program else self.current_bag(pump.pump_id)
        )
        if write.op == "set_rate" and write.value is not None:
            why = self.outside_library(program, write.value)
            if why is not None:
                raise Violation("I1", f"command {cid} wrote {pump.pump_id}: {why}")
        if write.op == "start":
            why = self.outside_library(program, write.rate)
            if why is not None and pump.panel_change is not None:
                change = self.panel[pump.panel_change]
                if not change.seen:  # set at the panel after the gateway's last read
                    self.notes.append(f"start {cid} raced a panel change: {why}")
                    return
            if why is not None:
                raise Violation("I1", f"command {cid} started {pump.pump_id}: {why}")

    def _on_result(self, result: Emitted, pumps: dict[str, SimPump]) -> None:
        data = result.data
        cid = data.get("id")
        phase = data.get("phase")
        if not isinstance(cid, str) or cid not in self.sent:
            return
        if phase == "accepted":
            self.accepted.setdefault(cid, result.at)
            first = self.accepted_on.setdefault(cid, result.pump_id)
            if first != result.pump_id:
                raise Violation(
                    "I3", f"command {cid} was accepted on {first} and again on {result.pump_id}"
                )
        elif phase in FINAL_PHASES and data.get("repeated"):
            # a final result published again after a restart: a copy of the latest one
            # (checked when first published, or never published: then it ends the command now)
            first = self.final_results.get(cid)
            if first is not None and first != _final_copy(data):
                raise Violation(
                    "I2", f"command {cid}: repeated result {data} differs from the first {first}"
                )
            if first is None and phase == "applied":
                self._check_applied(cid, data, pumps[result.pump_id])
            self.final_results.setdefault(cid, _final_copy(data))
            self.ended.setdefault(cid, str(phase))
        elif phase in FINAL_PHASES:
            self.ended[cid] = str(phase)
            # the latest final result (a reconciled one supersedes an uncertain one)
            self.final_results[cid] = _final_copy(data)
            if phase == "applied":
                self._check_applied(cid, data, pumps[result.pump_id])

    def _check_applied(self, cid: str, data: dict[str, Any], pump: SimPump) -> None:
        sent = self.sent[cid]
        writes = self.writes_by_command.get(cid, [])
        how = "reconciled as applied" if data.get("reconciled") else "applied"
        if not writes:
            raise Violation(
                "I2",
                f"command {cid} ({sent.body['action']}) {how} but never reached {pump.pump_id}",
            )
        readback = data.get("readback") or {}
        rate = (readback.get("rate") or {}).get("value")
        if rate is None:
            raise Violation("I2", f"command {cid} {how} without a read-back rate")
        read = Decimal(str(rate))
        write = writes[0]
        if write.op == "set_rate" and write.value is not None and read != write.value:
            raise Violation(
                "I2",
                f"command {cid} {how} with read-back {read} mL/h but it wrote {write.value} mL/h",
            )
        program = sent.program if sent.program is not None else self.current_bag(pump.pump_id)
        truth = dose_at(program, read)
        dose = readback.get("dose") or {}
        reported = dose.get("value")
        if truth is None or reported is None or dose.get("unit") != program.dose_unit:
            raise Violation(
                "I2",
                f"command {cid} {how}: dose {dose or None} but {pump.pump_id} runs "
                f"{program.drug} {program.concentration} {program.concentration_unit}",
            )
        if abs(Decimal(str(reported)) - truth) > Decimal("1e-6") * max(truth, Decimal(1)):
            raise Violation(
                "I2",
                f"command {cid} {how} at {read} mL/h reporting {reported} {program.dose_unit}, "
                f"but the bag hung ({program.drug} {program.concentration} "
                f"{program.concentration_unit}) delivers {truth:.6f} {program.dose_unit}",
            )
        if sent.program is not None:
            self.bag[pump.pump_id] = sent.program

    # -- checks ------------------------------------------------------------------------------

    def check_deadlines(self, now: float, *, final: bool = False) -> None:
        for cid, at in self.accepted.items():
            if cid in self.ended:
                continue
            ttl = float(self.sent[cid].body.get("ttl_s", 30))
            deadline = max(at, self.last_restart) + ttl + END_GRACE_S
            if final or now > deadline:
                raise Violation(
                    "I3",
                    f"command {cid} ({self.sent[cid].body['action']} on {self.sent[cid].pump_id})"
                    f" accepted at t={at:.2f} has no applied/failed/uncertain at t={now:.2f}",
                )

    def check_journal(self) -> None:
        broken = journal_verify(self.data_dir)
        if broken is not None:
            raise Violation("I6", f"journal verify fails: {broken}")

    def check_panel_changes(self) -> None:
        if not any(change.seen for change in self.panel):
            return
        events = journal_events(self.data_dir)
        for change in self.panel:
            if not change.seen or change.unchanged:
                continue
            later = [e for e in events if e.n > change.journal_head and e.pump_id == change.pump_id]
            changed = any(
                e.event.get("type") == "rate_changed" and _rate(e.event.get("to")) == change.rate
                for e in later
            )
            if not changed:
                # a pump whose rate the journal never knew: its first reading is journaled with
                # the connection (connection_changed carries the rate) and judged as is
                known_before = any(
                    e.pump_id == change.pump_id
                    and (_rate(e.event.get("to")) is not None or _rate(e.event) is not None)
                    for e in events
                    if e.n <= change.journal_head
                )
                changed = not known_before and any(
                    e.event.get("type") == "connection_changed" and _rate(e.event) == change.rate
                    for e in later
                )
            if not changed and change.lost_to_journal_fault:
                self.notes.append(f"{change} was replaced before the journal could take it")
                continue
            if not changed:
                raise Violation(
                    "I4",
                    f"{change.pump_id}: rate set to {change.rate} mL/h at the pump at "
                    f"t={change.at:.2f}, read by the gateway, never journaled as rate_changed",
                )
            judged = any(
                e.event.get("type") == "out_of_library_observed" and _rate(e.event) == change.rate
                for e in later
            )
            if change.out_of_library and not judged:
                raise Violation(
                    "I4",
                    f"{change.pump_id}: rate {change.rate} mL/h set at the pump at "
                    f"t={change.at:.2f} is outside the library; no out_of_library_observed",
                )


def _rate(obj: Any) -> Decimal | None:
    rate = (obj or {}).get("rate") if isinstance(obj, dict) else None
    value = rate.get("value") if isinstance(rate, dict) else None
    return None if value is None else Decimal(str(value))


def _final_copy(data: dict[str, Any]) -> dict[str, Any]:
    """What a repeated final result must repeat: phase, verdict, error, read-back."""
    return {k: data.get(k) for k in ("phase", "verdict", "error", "readback")}
