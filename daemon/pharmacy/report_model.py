"""The CQI report's model: what it counts, from source-neutral facts.

A source turns what it reads into :data:`Fact` values and gives them to
:meth:`Report.take` in the order they happened on one gateway: the journal of one gateway
(``daemon/pharmacy/report.py``) or the fleet's PostgreSQL store
(``daemon/fleet/report_source.py``).
One :class:`Report` holds one gateway's state (the program of each pump, the pending
rejections); :func:`merge` adds several gateways' reports into the hospital's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING

from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts, parse_ts
from daemon.pharmacy.report_facts import (
    Accepted,
    Fact,
    Judged,
    LibraryChangeSeen,
    ObservedOutside,
    Overridden,
    ProgramSeen,
    RateChangeSeen,
)
from daemon.pharmacy.report_items import (
    CatchItem,
    LibraryChangeItem,
    ObservedItem,
    OverrideItem,
    _tagged,
)
from protocol.verdict import Outcome

if TYPE_CHECKING:
    pass

CATCH_WINDOW = timedelta(minutes=10)
UNKNOWN = "(unknown)"
TOTAL = "(all)"
METRICS = (
    "programmings",
    "accepted_outright",
    "confirmations_asked",
    "overrides",
    "hard_rejections",
    "catches",
    "observed_outside_library",
    "rate_changes_gated",
    "rate_changes_at_pump",
    "library_compliance",
    "alerts_per_100",
    "library_versions",
)
_COUNTS = METRICS[:9]


# -- counts --------------------------------------------------------------------------------


@dataclass
class Cell:
    """The counts of one drug x profile (or of the total)."""

    programmings: int = 0
    accepted_outright: int = 0
    confirmations_asked: int = 0
    overrides: int = 0
    hard_rejections: int = 0
    catches: int = 0
    observed_outside_library: int = 0
    rate_changes_gated: int = 0
    rate_changes_at_pump: int = 0
    libraries: set[str] = field(default_factory=set)

    def add(self, other: Cell) -> None:
        """Add ``other``'s counts to these."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.libraries |= other.libraries

    def to_json(self) -> JsonObject:
        """The counts and the ratios derived from them, as the summary table publishes them."""
        changes = self.rate_changes_gated + self.rate_changes_at_pump
        alerts = self.confirmations_asked + self.hard_rejections
        return {
            "programmings": self.programmings,
            "accepted_outright": self.accepted_outright,
            "confirmations_asked": self.confirmations_asked,
            "overrides": self.overrides,
            "hard_rejections": self.hard_rejections,
            "catches": self.catches,
            "observed_outside_library": self.observed_outside_library,
            "rate_changes_gated": self.rate_changes_gated,
            "rate_changes_at_pump": self.rate_changes_at_pump,
            "library_compliance": round(self.rate_changes_gated / changes, 4) if changes else None,
            "alerts_per_100": round(100 * alerts / self.programmings, 2)
            if self.programmings
            else None,
            "library_versions": sorted(self.libraries),
        }


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One row of the summary table: a drug x profile (or the total) and its counts;
    ``gateway`` only in the hospital report's CSV."""

    drug: str
    profile: str
    cell: Cell
    gateway: str | None = None

    def to_json(self) -> JsonObject:
        row: JsonObject = {"drug": self.drug, "profile": self.profile, **self.cell.to_json()}
        return _tagged(self.gateway, row)


@dataclass(frozen=True)
class Window:
    """``[start, end)``; None is open."""

    start: str | None = None
    end: str | None = None

    def holds(self, ts: str) -> bool:
        return (self.start is None or ts >= self.start) and (self.end is None or ts < self.end)


@dataclass
class _Pending:
    command_id: str
    ts: datetime
    key: tuple[str, str]
    counted: bool


@dataclass
class Report:
    """Everything the report shows, for one gateway (or merged, :func:`merge`).

    ``gateway`` (when set) is added to every listed override, catch, observation and
    library change."""

    window: Window = field(default_factory=Window)
    gateway: str | None = None
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    total: Cell = field(default_factory=Cell)
    overrides: list[OverrideItem] = field(default_factory=list)
    catches: list[CatchItem] = field(default_factory=list)
    observed: list[ObservedItem] = field(default_factory=list)
    library_changes: list[LibraryChangeItem] = field(default_factory=list)
    daily: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_read: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    _programs: dict[str, tuple[str, str]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _commands: dict[str, tuple[str, tuple[str, str]]] = field(default_factory=dict)
    _rejected: dict[str, _Pending] = field(default_factory=dict)
    _changes_seen: set[tuple[str, str | None]] = field(default_factory=set)

    # -- reading -------------------------------------------------------------------------

    def mark(self, ts: str) -> bool:
        """A record dated ``ts`` was read; returns whether it is inside the window."""
        inside = self.window.holds(ts)
        if inside:
            self.first_ts = self.first_ts or ts
            self.last_ts = ts
        return inside

    def take(self, fact: Fact) -> None:
        """Account for one fact (facts of one gateway, in the order they happened)."""
        if isinstance(fact, ProgramSeen):
            self._programs[fact.pump] = (fact.drug, fact.profile)
            return
        inside = self.window.holds(fact.ts)
        if isinstance(fact, Judged):
            self._judged(fact, inside=inside)
        elif isinstance(fact, Accepted):
            self._accepted(fact, inside=inside)
        elif isinstance(fact, LibraryChangeSeen):
            self._library_changed(fact, inside=inside)
        elif not inside:
            return
        elif isinstance(fact, Overridden):
            self._override(fact)
        elif isinstance(fact, RateChangeSeen):
            self._rate_changed(fact)
        else:
            self._observed(fact)

    def _key(self, pump: str) -> tuple[str, str]:
        return self._programs.get(pump, (UNKNOWN, UNKNOWN))

    def _cells(self, key: tuple[str, str]) -> tuple[Cell, Cell]:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        return cell, self.total

    def _day(self, ts: str, what: str) -> None:
        day = self.daily.setdefault(ts[:10], {})
        day[what] = day.get(what, 0) + 1

    def _library_changed(self, fact: LibraryChangeSeen, *, inside: bool) -> None:
        if fact.program is not None:
            self._programs[fact.pump] = fact.program
        # one change per (time, new library): every pump journals the same change
        mark = (fact.ts, None if fact.new is None else fact.new.sha256)
        if inside and mark not in self._changes_seen:
            self._changes_seen.add(mark)
            self.library_changes.append(
                LibraryChangeItem(self.gateway, fact.ts, fact.old, fact.new, fact.via, fact.by)
            )

    def _rate_changed(self, fact: RateChangeSeen) -> None:
        for cell in self._cells(self._key(fact.pump)):
            if fact.gated:
                cell.rate_changes_gated += 1
            else:
                cell.rate_changes_at_pump += 1
        self._day(fact.ts, "rate_changes_gated" if fact.gated else "rate_changes_at_pump")

    def _observed(self, fact: ObservedOutside) -> None:
        drug, profile = self._key(fact.pump)
        for cell in self._cells((drug, profile)):
            cell.observed_outside_library += 1
        verdict = fact.verdict
        self.observed.append(
            ObservedItem(
                self.gateway,
                fact.ts,
                fact.pump,
                drug,
                profile,
                tuple(sorted(set(verdict.rules))),
                verdict.outcome,
                verdict.rate,
                verdict.dose,
            )
        )
        self._day(fact.ts, "observed_outside_library")

    def _judged(self, fact: Judged, *, inside: bool) -> None:
        if fact.command_id in self._seen:
            return  # the same command confirmed: one programming
        self._seen.add(fact.command_id)
        key = self._key(fact.pump)
        self._commands[fact.command_id] = (fact.pump, key)
        outcome = fact.verdict.outcome
        if outcome is Outcome.REJECT:
            self._rejected[fact.pump] = _Pending(fact.command_id, parse_ts(fact.ts), key, inside)
        if not inside:
            return
        lib = fact.verdict.library
        for cell in self._cells(key):
            cell.programmings += 1
            if lib is not None:
                cell.libraries.add(f"{lib.name} {lib.version}")
            if outcome is Outcome.ACCEPT:
                cell.accepted_outright += 1
            elif outcome is Outcome.CONFIRM:
                cell.confirmations_asked += 1
            else:
                cell.hard_rejections += 1
        self._day(fact.ts, "programmings")
        if outcome is not Outcome.ACCEPT:
            self._day(fact.ts, "alerts")

    def _override(self, fact: Overridden) -> None:
        _pump, key = self._commands.get(fact.command_id, (fact.pump, self._key(fact.pump)))
        for cell in self._cells(key):
            cell.overrides += 1
        self.overrides.append(
            OverrideItem(
                self.gateway,
                fact.ts,
                fact.pump,
                key[0],
                key[1],
                fact.command_id,
                fact.clinician,
                fact.reason,
                tuple(sorted(set(fact.rules))),
            )
        )

    def _accepted(self, fact: Accepted, *, inside: bool) -> None:
        pending = self._rejected.get(fact.pump)
        if pending is None or pending.command_id == fact.command_id:
            return
        del self._rejected[fact.pump]
        at = parse_ts(fact.ts)
        if at - pending.ts > CATCH_WINDOW or not (inside and pending.counted):
            return
        for cell in self._cells(pending.key):
            cell.catches += 1
        self.catches.append(
            CatchItem(
                self.gateway,
                fact.pump,
                pending.key[0],
                pending.key[1],
                pending.command_id,
                format_ts(pending.ts),
                fact.command_id,
                fact.ts,
                round((at - pending.ts).total_seconds() / 60, 2),
            )
        )

    # -- output ----------------------------------------------------------------------------

    def rows(self, gateway: str | None = None) -> list[SummaryRow]:
        """The summary table: one row per drug x profile (sorted), then the total (each
        naming ``gateway`` when given: the hospital report's CSV)."""
        out = [
            SummaryRow(drug, profile, cell, gateway)
            for (drug, profile), cell in sorted(self.cells.items())
        ]
        out.append(SummaryRow(TOTAL, TOTAL, self.total, gateway))
        return out

    def to_json(self, *, journal: str, generated_at: datetime) -> JsonObject:
        """Everything, as the JSON format prints it (``journal``: what was read)."""
        return {
            "report": "infusiond CQI report",
            "generated_at": format_ts(generated_at),
            "journal": journal,
            "from": self.window.start,
            "to": self.window.end,
            "first_row": self.first_ts,
            "last_row": self.last_ts,
            "rows_read": self.rows_read,
            "catch_window_min": CATCH_WINDOW.total_seconds() / 60,
            "summary": json_rows(self.rows()),
            "overrides": [item.to_json() for item in self.overrides],
            "catches": [item.to_json() for item in self.catches],
            "observed_outside_library": [item.to_json() for item in self.observed],
            "library_changes": [item.to_json() for item in self.library_changes],
            "daily": [{"date": d, **counts} for d, counts in sorted(self.daily.items())],
        }


def merge(reports: Iterable[Report], window: Window) -> Report:
    """The sum of several gateways' reports (their lists in time order)."""
    out = Report(window=window)
    for part in reports:
        for drug_profile, cell in part.cells.items():
            out._cells(drug_profile)[0].add(cell)
        out.total.add(part.total)
        out.overrides += part.overrides
        out.catches += part.catches
        out.observed += part.observed
        out.library_changes += part.library_changes
        for day, counts in part.daily.items():
            mine = out.daily.setdefault(day, {})
            for what, n in counts.items():
                mine[what] = mine.get(what, 0) + n
        out.rows_read += part.rows_read
        if part.first_ts is not None:
            out.first_ts = min(out.first_ts or part.first_ts, part.first_ts)
        if part.last_ts is not None:
            out.last_ts = max(out.last_ts or part.last_ts, part.last_ts)
    out.overrides.sort(key=attrgetter("ts"))
    out.catches.sort(key=attrgetter("accepted_at"))
    out.observed.sort(key=attrgetter("ts"))
    out.library_changes.sort(key=attrgetter("ts"))
    return out


def json_rows(rows: Sequence[SummaryRow]) -> list[JsonObject]:
    """Summary rows as the JSON document lists them."""
    return [row.to_json() for row in rows]
