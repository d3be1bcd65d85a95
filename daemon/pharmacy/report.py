"""``infusiond report``: the pharmacy's CQI (continuous quality improvement) report.

Read from the journal, read-only and without the data directory's lock (safe while the
daemon runs), per drug x profile and in total:

- ``programmings``: commands that reached the gate (a verdict was computed), once per id;
- ``accepted_outright``: verdict accept; ``confirmations_asked``: verdict confirm;
  ``hard_rejections``: verdict reject;
- ``overrides``: confirmations given, each with its reason, clinician and rule ids;
- ``catches``: a hard rejection followed within 10 minutes by an accepted programming of the
  same pump (the error the library caught, then the right dose);
- ``observed_outside_library``: rate changes seen at the pump that the library would not
  have accepted outright (``out_of_library_observed``);
- ``library_compliance``: rate changes made through the gate / all rate changes (the others
  were made at the pump's front panel); None when there was no rate change;
- ``alerts_per_100``: (confirmations asked + hard rejections) per 100 programmings;
- ``library_versions``: the libraries whose verdicts are counted.

A command is attributed to the drug and profile its pump ran when it arrived: the pump's
latest ``program_changed`` event, else the programs the gateway journals at start and with
every ``library_changed`` event; ``(unknown)`` for a journal older than that. ``--from`` is
inclusive and ``--to`` exclusive (RFC 3339, or a date meaning its midnight UTC); the whole
journal is read so that programs and pending rejections before ``--from`` are known.
Formats: ``json`` (everything), ``csv`` (the summary table, one row per drug x profile, then
the total) and ``html`` (one self-contained page: tables and embedded PNG charts).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from daemon.base.paths import default_data_dir, journal_path
from daemon.base.timefmt import format_ts, parse_ts
from daemon.journal.records import JournalKind, JournalRow
from daemon.journal.store import Journal
from protocol.errors import InfusiondError

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


class ReportError(InfusiondError):
    """Bad report arguments (a time that does not parse, an unusable output path)."""


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

    def to_dict(self) -> dict[str, Any]:
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
    """Everything the report shows; :meth:`feed` takes journal rows in order."""

    window: Window = field(default_factory=Window)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    total: Cell = field(default_factory=Cell)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    catches: list[dict[str, Any]] = field(default_factory=list)
    observed: list[dict[str, Any]] = field(default_factory=list)
    library_changes: list[dict[str, Any]] = field(default_factory=list)
    daily: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_read: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    _programs: dict[str, tuple[str, str]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _commands: dict[str, tuple[str, tuple[str, str]]] = field(default_factory=dict)
    _rejected: dict[str, _Pending] = field(default_factory=dict)
    _changes_seen: set[tuple[str, str]] = field(default_factory=set)

    # -- reading -------------------------------------------------------------------------

    def feed(self, row: JournalRow) -> None:
        """Account for one journal row (rows must come in journal order)."""
        self.rows_read += 1
        payload = row.payload
        if row.kind == JournalKind.STATE and isinstance(payload.get("programs"), dict):
            for pump_id, prog in payload["programs"].items():
                self._programs[pump_id] = (str(prog.get("drug")), str(prog.get("profile")))
            return
        inside = self.window.holds(row.ts)
        if inside:
            self.first_ts = self.first_ts or row.ts
            self.last_ts = row.ts
        pump = row.pump_id or ""
        if row.kind == JournalKind.EVENT:
            self._event(row, payload.get("event") or {}, pump, inside=inside)
        elif row.kind == JournalKind.VERDICT:
            self._verdict(row, payload, pump, inside=inside)
        elif row.kind == JournalKind.OVERRIDE and inside:
            self._override(row, payload, pump)
        elif row.kind == JournalKind.COMMAND and _phase(payload) == "accepted":
            self._accepted(row, str(payload.get("id")), pump, inside=inside)

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

    def _event(self, row: JournalRow, event: dict[str, Any], pump: str, *, inside: bool) -> None:
        kind = event.get("type")
        if kind == "program_changed":
            program = event.get("program") or {}
            self._programs[pump] = (str(program.get("drug")), str(program.get("profile")))
            return
        if kind == "library_changed":
            if event.get("drug") and event.get("profile"):
                self._programs[pump] = (str(event["drug"]), str(event["profile"]))
            mark = (row.ts, str((event.get("to") or {}).get("sha256")))
            if inside and mark not in self._changes_seen:
                self._changes_seen.add(mark)
                self.library_changes.append(
                    {
                        "ts": row.ts,
                        "from": event.get("from"),
                        "to": event.get("to"),
                        "via": event.get("via"),
                        "by": event.get("by"),
                    }
                )
            return
        if not inside:
            return
        if kind == "rate_changed":
            gated = event.get("command_id") is not None
            for cell in self._cells(self._key(pump)):
                if gated:
                    cell.rate_changes_gated += 1
                else:
                    cell.rate_changes_at_pump += 1
            self._day(row.ts, "rate_changes_gated" if gated else "rate_changes_at_pump")
        elif kind == "out_of_library_observed":
            drug, profile = self._key(pump)
            for cell in self._cells((drug, profile)):
                cell.observed_outside_library += 1
            verdict = event.get("verdict") or {}
            self.observed.append(
                {
                    "ts": row.ts,
                    "pump_id": pump,
                    "drug": drug,
                    "profile": profile,
                    "rules": sorted({f.get("rule") for f in verdict.get("findings", [])}),
                    "verdict": verdict.get("verdict"),
                    "rate": verdict.get("rate"),
                    "dose": verdict.get("dose"),
                }
            )
            self._day(row.ts, "observed_outside_library")

    def _verdict(
        self, row: JournalRow, payload: dict[str, Any], pump: str, *, inside: bool
    ) -> None:
        command_id = str(payload.get("id"))
        if command_id in self._seen:
            return  # the same command confirmed: one programming
        self._seen.add(command_id)
        key = self._key(pump)
        self._commands[command_id] = (pump, key)
        verdict = payload.get("verdict") or {}
        outcome = verdict.get("verdict")
        if outcome == "reject":
            self._rejected[pump] = _Pending(command_id, parse_ts(row.ts), key, inside)
        if not inside:
            return
        lib = verdict.get("library") or {}
        for cell in self._cells(key):
            cell.programmings += 1
            if lib:
                cell.libraries.add(f"{lib.get('name')} {lib.get('version')}")
            if outcome == "accept":
                cell.accepted_outright += 1
            elif outcome == "confirm":
                cell.confirmations_asked += 1
            elif outcome == "reject":
                cell.hard_rejections += 1
        self._day(row.ts, "programmings")
        if outcome in ("confirm", "reject"):
            self._day(row.ts, "alerts")

    def _override(self, row: JournalRow, payload: dict[str, Any], pump: str) -> None:
        command_id = str(payload.get("command_id"))
        _pump, key = self._commands.get(command_id, (pump, self._key(pump)))
        for cell in self._cells(key):
            cell.overrides += 1
        self.overrides.append(
            {
                "ts": row.ts,
                "pump_id": pump,
                "drug": key[0],
                "profile": key[1],
                "command_id": command_id,
                "clinician": payload.get("clinician"),
                "reason": payload.get("reason"),
                "rules": sorted({str(f.get("rule")) for f in payload.get("findings", [])}),
            }
        )

    def _accepted(self, row: JournalRow, command_id: str, pump: str, *, inside: bool) -> None:
        pending = self._rejected.get(pump)
        if pending is None or pending.command_id == command_id:
            return
        del self._rejected[pump]
        at = parse_ts(row.ts)
        if at - pending.ts > CATCH_WINDOW or not (inside and pending.counted):
            return
        for cell in self._cells(pending.key):
            cell.catches += 1
        self.catches.append(
            {
                "pump_id": pump,
                "drug": pending.key[0],
                "profile": pending.key[1],
                "rejected_command": pending.command_id,
                "rejected_at": format_ts(pending.ts),
                "accepted_command": command_id,
                "accepted_at": row.ts,
                "minutes": round((at - pending.ts).total_seconds() / 60, 2),
            }
        )

    # -- output ----------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The summary table: one row per drug x profile (sorted), then the total."""
        out = [
            {"drug": drug, "profile": profile, **cell.to_dict()}
            for (drug, profile), cell in sorted(self.cells.items())
        ]
        out.append({"drug": TOTAL, "profile": TOTAL, **self.total.to_dict()})
        return out

    def to_dict(self, *, journal: str, generated_at: datetime) -> dict[str, Any]:
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
            "summary": self.rows(),
            "overrides": self.overrides,
            "catches": self.catches,
            "observed_outside_library": self.observed,
            "library_changes": self.library_changes,
            "daily": [{"date": d, **counts} for d, counts in sorted(self.daily.items())],
        }


def _phase(payload: dict[str, Any]) -> object:
    outcome = payload.get("outcome")
    return outcome.get("phase") if isinstance(outcome, dict) else None


def read_journal(
    journal: Journal, window: Window, progress: Callable[[int], None] | None = None
) -> Report:
    """Feed every row of ``journal`` (one consistent snapshot) into a :class:`Report`."""
    report = Report(window=window)
    with journal.snapshot():
        for row in journal.rows():
            report.feed(row)
            if progress is not None and report.rows_read % 2048 == 0:
                progress(2048)
    if progress is not None:
        progress(report.rows_read % 2048)
    return report


def to_csv(report: Report) -> str:
    """The summary table as CSV (library versions joined with ``;``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["drug", "profile", *METRICS], lineterminator="\n")
    writer.writeheader()
    for row in report.rows():
        writer.writerow({**row, "library_versions": ";".join(row["library_versions"])})
    return buf.getvalue()


def parse_bound(text: str | None, what: str) -> str | None:
    """An RFC 3339 time or a date, as the journal's own timestamp format (UTC, ms, Z)."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            when = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"--{what}: {text!r} is not an RFC 3339 time or a date") from None
    if when.tzinfo is None:
        raise ReportError(f"--{what}: {text!r} needs a zone (Z or +hh:mm)")
    return format_ts(when)


def _row_count(path: Path) -> int:
    """How many rows the journal holds (for the progress bar's length)."""
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT count(*) FROM journal").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(count)


def _iter_progress(total: int, *, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import Progress  # noqa: PLC0415 - only with a terminal

    with Progress(transient=True) as bar:
        task = bar.add_task("reading journal", total=total)
        yield lambda n: bar.advance(task, n)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond report``."""
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    window = Window(parse_bound(args.start, "from"), parse_bound(args.end, "to"))
    path = journal_path(data_dir)
    journal = Journal.open_readonly(path)
    try:
        show = not args.no_progress and sys.stderr.isatty()
        total = _row_count(path) if show else 0
        for progress in _iter_progress(total, enabled=show):
            report = read_journal(journal, window, progress)
    finally:
        journal.close()
    now = datetime.now(UTC)
    if args.format == "json":
        text = json.dumps(report.to_dict(journal=str(path), generated_at=now), ensure_ascii=False)
        text += "\n"
    elif args.format == "csv":
        text = to_csv(report)
    else:
        from daemon.pharmacy.report_html import render_html  # noqa: PLC0415 - matplotlib

        text = render_html(report.to_dict(journal=str(path), generated_at=now))
    _write(text, args.out, sys.stdout)
    return 0


def _write(text: str, out: str | None, stdout: TextIO) -> None:
    if out is None:
        stdout.write(text)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"--out: cannot write {out}: {exc.strerror}") from None
