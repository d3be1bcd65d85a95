"""``infusiond report``: the pharmacy's CQI (continuous quality improvement) report.

Read from the journal, read-only and without the data directory's lock (safe while the
daemon runs), or with ``--postgres`` from the fleet store for the whole hospital
(``daemon/fleet/report_source.py``); both sources give facts to one model
(``daemon/pharmacy/report_model.py``). Per drug x profile and in total:

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
the total; from PostgreSQL with a ``gateway`` column) and ``html`` (one self-contained page:
tables and embedded PNG charts).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from daemon.journal import Journal, JournalKind, JournalRow
from daemon.paths import default_data_dir, journal_path
from daemon.pharmacy.report_model import (
    METRICS,
    Accepted,
    Fact,
    Judged,
    LibraryChanged,
    ObservedOutside,
    Overridden,
    ProgramSeen,
    RateChanged,
    Report,
    Window,
)
from daemon.timefmt import format_ts
from protocol.errors import InfusiondError


class ReportError(InfusiondError):
    """Bad report arguments (a time that does not parse, an unusable output path, a database
    that cannot be read)."""


def journal_facts(row: JournalRow) -> list[Fact]:
    """What one journal row tells the report (nothing for most rows)."""
    payload = row.payload
    pump = row.pump_id or ""
    if _programs_row(row):
        return [
            ProgramSeen(p, str(prog.get("drug")), str(prog.get("profile")))
            for p, prog in payload["programs"].items()
        ]
    if row.kind == JournalKind.EVENT:
        return event_facts(row.ts, pump, payload.get("event") or {})
    if row.kind == JournalKind.VERDICT:
        return [Judged(row.ts, pump, str(payload.get("id")), payload.get("verdict") or {})]
    if row.kind == JournalKind.OVERRIDE:
        return [override_fact(row.ts, pump, payload)]
    if row.kind == JournalKind.COMMAND and _phase(payload) == "accepted":
        return [Accepted(row.ts, pump, str(payload.get("id")))]
    return []


def event_facts(ts: str, pump: str, event: dict[str, Any]) -> list[Fact]:
    """What a ``pump.event`` (journaled or published) tells the report."""
    kind = event.get("type")
    if kind == "program_changed":
        program = event.get("program") or {}
        return [ProgramSeen(pump, str(program.get("drug")), str(program.get("profile")))]
    if kind == "library_changed":
        return [LibraryChanged(ts, pump, event)]
    if kind == "rate_changed":
        return [RateChanged(ts, pump, gated=event.get("command_id") is not None)]
    if kind == "out_of_library_observed":
        return [ObservedOutside(ts, pump, event.get("verdict") or {})]
    return []


def override_fact(ts: str, pump: str, payload: dict[str, Any]) -> Overridden:
    """An ``override_accepted`` (journal row or event) as a fact."""
    return Overridden(
        ts,
        pump,
        str(payload.get("command_id")),
        payload.get("clinician"),
        payload.get("reason"),
        tuple(payload.get("findings") or ()),
    )


def feed(report: Report, row: JournalRow) -> None:
    """Account for one journal row (rows must come in journal order)."""
    report.rows_read += 1
    if not _programs_row(row):
        report.mark(row.ts)
    for fact in journal_facts(row):
        report.take(fact)


def _programs_row(row: JournalRow) -> bool:
    """The programs the gateway journals at start and with each library (not dated facts)."""
    return row.kind == JournalKind.STATE and isinstance(row.payload.get("programs"), dict)


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
            feed(report, row)
            if progress is not None and report.rows_read % 2048 == 0:
                progress(2048)
    if progress is not None:
        progress(report.rows_read % 2048)
    return report


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """Summary rows as CSV (library versions joined with ``;``; a ``gateway`` column first
    when the rows have one)."""
    buf = io.StringIO()
    first = ["gateway"] if rows and "gateway" in rows[0] else []
    fields = [*first, "drug", "profile", *METRICS]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
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
    window = Window(parse_bound(args.start, "from"), parse_bound(args.end, "to"))
    now = datetime.now(UTC)
    if args.postgres is not None:
        if args.data_dir is not None:
            raise ReportError("--data-dir and --postgres: give one source, not both")
        from daemon.fleet.report_source import fleet_report  # noqa: PLC0415 - psycopg

        data, csv_rows = fleet_report(args.postgres, window, args.gateway, generated_at=now)
    else:
        if args.gateway:
            raise ReportError("--gateway: only with --postgres (a journal is one gateway's)")
        data, csv_rows = _journal_report(args, window, now)
    if args.format == "json":
        text = json.dumps(data, ensure_ascii=False) + "\n"
    elif args.format == "csv":
        text = rows_csv(csv_rows)
    else:
        from daemon.pharmacy.report_html import render_html  # noqa: PLC0415 - matplotlib

        text = render_html(data)
    _write(text, args.out, sys.stdout)
    return 0


def _journal_report(
    args: argparse.Namespace, window: Window, now: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = journal_path(data_dir)
    journal = Journal.open_readonly(path)
    try:
        show = not args.no_progress and sys.stderr.isatty()
        total = _row_count(path) if show else 0
        for progress in _iter_progress(total, enabled=show):
            report = read_journal(journal, window, progress)
    finally:
        journal.close()
    return report.to_dict(journal=str(path), generated_at=now), report.rows()


def _write(text: str, out: str | None, stdout: TextIO) -> None:
    if out is None:
        stdout.write(text)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"--out: cannot write {out}: {exc.strerror}") from None
