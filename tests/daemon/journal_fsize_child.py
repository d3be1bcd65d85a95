"""Child process for the write-error tests: drives a real journal into the file-size limit
(RLIMIT_FSIZE, which the kernel enforces exactly like a full disk: the write fails, EFBIG
instead of ENOSPC) and out of it again, then prints what it saw as one JSON object.

    python -m tests.daemon.journal_fsize_child DATA_DIR async|sync

The soft limit is lowered only after the journal is open, to a little above the current size
of its files; the hard limit stays unlimited so the child can lift the soft one again ("the
operator freed some space"). SIGXFSZ is ignored by the Python interpreter at start (as in the
daemon), so the write fails instead of the signal killing the process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.base.paths import journal_path
from daemon.journal import AsyncJournal, Journal, JournalError
from tests.support.events import tagged

HEADROOM = 64 * 1024
BLOB = "x" * 3000  # a few pages per event: the limit is reached within a few dozen writes
MAX_WRITES = 1000
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def limit_file_size(data_dir: Path) -> int:
    files = [journal_path(data_dir)]
    files.append(files[0].with_name(files[0].name + "-wal"))
    limit = max(f.stat().st_size for f in files if f.exists()) + HEADROOM
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return limit


def lift_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


async def run_async(data_dir: Path) -> dict[str, Any]:
    journal = await AsyncJournal.open(data_dir, gateway_id="gw")
    await journal.record_event("pump-1", tagged(-1))
    limit_file_size(data_dir)
    error: BaseException | None = None
    written = 0
    for i in range(MAX_WRITES):
        try:
            await journal.record_event("pump-1", tagged(i, blob=BLOB))
        except Exception as exc:  # report whatever it is: the test asserts its type
            error = exc
            break
        written += 1
    seq_after_error = journal.seq
    writer_alive = journal._thread.is_alive()
    lift_limit()
    item = await journal.record_event("pump-1", tagged("after"))
    await journal.aclose()
    return {
        "written": written,
        "error_type": type(error).__name__ if error else None,
        "error_is_journal_error": isinstance(error, JournalError),
        "error": str(error),
        "seq_after_error": seq_after_error,
        "writer_alive_after_error": writer_alive,
        "seq_after_recovery": item.seq,
    }


def run_sync(data_dir: Path) -> dict[str, Any]:
    journal = Journal.open(data_dir, gateway_id="gw")
    with journal.transaction():
        journal.record_event("pump-1", tagged(-1), ts=T0)
    limit_file_size(data_dir)
    error: BaseException | None = None
    written = 0
    for i in range(MAX_WRITES):
        try:
            with journal.transaction():
                journal.record_event("pump-1", tagged(i, blob=BLOB), ts=T0)
        except Exception as exc:  # report whatever it is: the test asserts its type
            error = exc
            break
        written += 1
    seq_after_error = journal.current_seq()
    in_transaction = journal._conn.in_transaction
    lift_limit()
    with journal.transaction():
        item = journal.record_event("pump-1", tagged("after"), ts=T0)
    journal.close()
    return {
        "written": written,
        "error_type": type(error).__name__ if error else None,
        "error_is_journal_error": isinstance(error, JournalError),
        "error": str(error),
        "seq_after_error": seq_after_error,
        "in_transaction_after_error": in_transaction,
        "seq_after_recovery": item.seq,
    }


def reopened(data_dir: Path) -> dict[str, Any]:
    """What a restart finds: the chain, seq, the outbox and the event rows' seqs."""
    journal = Journal.open(data_dir, gateway_id="gw")
    try:
        return {
            "verify_ok": journal.verify().ok,
            "seq": journal.current_seq(),
            "outbox": [item.seq for item in journal.outbox_pending(limit=10_000)],
            "event_seqs": [row.payload["seq"] for row in journal.rows() if row.kind == "event"],
        }
    finally:
        journal.close()


def main() -> None:
    data_dir, mode = Path(sys.argv[1]), sys.argv[2]
    result = asyncio.run(run_async(data_dir)) if mode == "async" else run_sync(data_dir)
    result["reopened"] = reopened(data_dir)
    result["sigxfsz_ignored"] = signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    result["threads_left"] = threading.active_count()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
