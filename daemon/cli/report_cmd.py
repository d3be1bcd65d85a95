"""``infusiond report``: the CQI report (:mod:`daemon.pharmacy.report`) from one journal, or with
``--postgres`` from the fleet store (:mod:`daemon.fleet.report_source`), as JSON, CSV or HTML."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

from daemon.base.paths import default_data_dir, journal_path
from daemon.base.payload import JsonObject
from daemon.journal.store import Journal
from daemon.pharmacy.report import ReportError, parse_bound, read_journal, rows_csv
from daemon.pharmacy.report_model import SummaryRow, Window
from drivers.clock import utc_now


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
    now = utc_now()
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
) -> tuple[JsonObject, list[SummaryRow]]:
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
    return report.to_json(journal=str(path), generated_at=now), report.rows()


def _write(text: str, out: str | None, stdout: TextIO) -> None:
    if out is None:
        stdout.write(text)
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"--out: cannot write {out}: {exc.strerror}") from None
