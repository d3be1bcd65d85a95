"""The pharmacy's CQI (continuous quality improvement) report read from one gateway's journal
(``infusiond report``, :mod:`daemon.cli.report_cmd`).

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

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from daemon.base.errors import PayloadError
from daemon.base.timefmt import format_ts
from daemon.journal.records import JournalKind, JournalRow
from daemon.journal.store import Journal
from daemon.pharmacy.report_facts import (
    Accepted,
    Fact,
    Judged,
    LibraryChangeSeen,
    ObservedOutside,
    Overridden,
    ProgramSeen,
    RateChangeSeen,
    VerdictSeen,
    rules_from_json,
)
from daemon.pharmacy.report_model import METRICS, Report, SummaryRow, Window
from protocol.errors import InfusiondError


class ReportError(InfusiondError):
    """Bad report arguments (a time that does not parse, an unusable output path, a database
    that cannot be read)."""


def journal_facts(row: JournalRow) -> list[Fact]:
    """What one journal row tells the report (nothing for most rows); ``PayloadError``
    naming the row and the field when a row the report counts is malformed."""
    payload = row.payload
    pump = row.pump_id or ""
    where = f"journal row {row.n}"
    if _programs_row(row):
        return [
            ProgramSeen(p, *_program(prog, f"{where}: programs.{p}"))
            for p, prog in payload["programs"].items()
        ]
    if row.kind == JournalKind.EVENT:
        return event_facts(row.ts, pump, _object(payload, "event", where), f"{where}: event")
    if row.kind == JournalKind.VERDICT:
        verdict = VerdictSeen.from_json(payload.get("verdict"), where=f"{where}: verdict")
        return [Judged(row.ts, pump, str(payload.get("id")), verdict)]
    if row.kind == JournalKind.OVERRIDE:
        return [override_fact(row.ts, pump, payload, where)]
    if row.kind == JournalKind.COMMAND and _phase(payload) == "accepted":
        return [Accepted(row.ts, pump, str(payload.get("id")))]
    return []


def _object(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    """``data[key]``, an object (absent or null: an empty one)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where}: {key}: expected an object, got {value!r:.60}")
    return value


def _program(program: object, where: str) -> tuple[str, str]:
    """(drug, profile) of a program object; a missing one reads ``None``, as it always did
    (the pump then counts under that name rather than being left out)."""
    if not isinstance(program, Mapping):
        raise PayloadError(f"{where}: expected a program object, got {program!r:.60}")
    return str(program.get("drug")), str(program.get("profile"))


def event_facts(ts: str, pump: str, event: Mapping[str, object], where: str) -> list[Fact]:
    """What a ``pump.event`` (journaled or published) tells the report; ``where`` names the
    row in a ``PayloadError``."""
    kind = event.get("type")
    if kind == "program_changed":
        program = _object(event, "program", where)
        return [ProgramSeen(pump, *_program(program, f"{where}.program"))]
    if kind == "library_changed":
        return [LibraryChangeSeen.from_json(ts, pump, event, where)]
    if kind == "rate_changed":
        return [RateChangeSeen(ts, pump, gated=event.get("command_id") is not None)]
    if kind == "out_of_library_observed":
        verdict = VerdictSeen.from_json(event.get("verdict"), where=f"{where}.verdict")
        return [ObservedOutside(ts, pump, verdict)]
    return []


def override_fact(ts: str, pump: str, payload: Mapping[str, object], where: str) -> Overridden:
    """An ``override_accepted`` (journal row or event) as a fact."""
    clinician, reason = payload.get("clinician"), payload.get("reason")
    for name, value in (("clinician", clinician), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            raise PayloadError(f"{where}.{name}: expected a string, got {value!r:.60}")
    return Overridden(
        ts,
        pump,
        str(payload.get("command_id")),
        clinician if isinstance(clinician, str) else None,
        reason if isinstance(reason, str) else None,
        rules_from_json(payload.get("findings"), where=f"{where}.findings"),
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


def _phase(payload: Mapping[str, object]) -> object:
    outcome = payload.get("outcome")
    return outcome.get("phase") if isinstance(outcome, Mapping) else None


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


def rows_csv(rows: Sequence[SummaryRow]) -> str:
    """Summary rows as CSV (library versions joined with ``;``; a ``gateway`` column first
    when the rows have one)."""
    buf = io.StringIO()
    first = ["gateway"] if rows and rows[0].gateway is not None else []
    fields = [*first, "drug", "profile", *METRICS]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        versions = ";".join(sorted(row.cell.libraries))
        writer.writerow({**row.to_json(), "library_versions": versions})
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
