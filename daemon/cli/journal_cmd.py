"""``infusiond journal verify|export [--data-dir DIR]``: read-only, safe while the daemon runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from daemon.base.paths import default_data_dir, journal_path
from daemon.journal.store import Journal

EXIT_OK = 0
EXIT_BROKEN = 1
PROGRESS_EVERY = 5000


def run(args: argparse.Namespace) -> int:
    """Entry point for the ``journal`` subcommands; JournalError propagates to the CLI."""
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        if args.journal_cmd == "verify":
            report = journal.verify()
            if not report.ok:
                sys.stderr.write(
                    f"journal {journal.path}: broken at row {report.first_bad}: {report.reason}\n"
                )
                return EXIT_BROKEN
            sys.stdout.write(
                f"journal {journal.path}: ok, {report.rows} rows, session {journal.session}\n"
            )
            return EXIT_OK
        progress = sys.stderr.isatty()  # a person is watching: show how far the export is
        count = 0
        for count, row in enumerate(journal.export(), start=1):
            sys.stdout.write(json.dumps(row, ensure_ascii=False, sort_keys=True))
            sys.stdout.write("\n")
            if progress and count % PROGRESS_EVERY == 0:
                sys.stderr.write(f"\rexported {count} rows")
        if progress:
            sys.stderr.write(f"\rexported {count} rows from {journal.path}\n")
        return EXIT_OK
    finally:
        journal.close()
