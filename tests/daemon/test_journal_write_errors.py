"""A write the disk refuses (full, I/O error, file-size limit, read-only) is a JournalError,
never a raw sqlite3 error and never a dead writer thread: the transaction is rolled back, the
seq handed out stays consistent with the file, and the next write succeeds once the disk takes
writes again.

The fault is real: a child process lowers its own RLIMIT_FSIZE to a little above the journal's
current size, so the kernel refuses the write that would grow a file past it (EFBIG, which SQLite
reports as an I/O error, as it does ENOSPC as "disk full"), then lifts the limit again. SIGXFSZ
is ignored by the interpreter at start, as in the daemon (``infusiond`` is a Python process), so
the write fails instead of the signal killing the process; the child reports that too."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import AsyncJournal, Journal, JournalError, JournalKind
from tests.support.events import rate_changed, started

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def run_child(data_dir: Path, mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.daemon.journal_fsize_child", str(data_dir), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_refused_write_is_a_journal_error_and_the_next_write_succeeds(
    tmp_path: Path, mode: str
) -> None:
    """AsyncJournal (writer thread) and Journal.transaction alike: the failing write raises
    JournalError naming the file; seq did not move; once the limit is lifted the next event
    gets the very next seq (none lost, none reused) and a restart finds a verified chain whose
    events and outbox are exactly the acknowledged ones."""
    result = run_child(tmp_path, mode)
    assert result["sigxfsz_ignored"] is True
    assert result["error_type"] == "JournalError"
    assert result["error_is_journal_error"] is True
    assert str(tmp_path / "journal.sqlite3") in result["error"]
    assert "write failed" in result["error"]
    acknowledged = 1 + result["written"]  # the event before the limit, then the ones that fit
    assert result["seq_after_error"] == acknowledged
    assert result["seq_after_recovery"] == acknowledged + 1
    if mode == "async":
        assert result["writer_alive_after_error"] is True
    else:
        assert result["in_transaction_after_error"] is False
    assert result["threads_left"] == 1  # the writer thread ended with aclose(), not before
    reopened = result["reopened"]
    assert reopened["verify_ok"] is True
    assert reopened["seq"] == acknowledged + 1
    assert reopened["event_seqs"] == list(range(1, acknowledged + 2))
    assert reopened["outbox"] == list(range(1, acknowledged + 2))


@pytest.mark.asyncio
async def test_an_sqlite_error_inside_a_batch_fails_the_whole_batch_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    """A fault at an exact point (a job whose statement fails as a full disk would, injected
    in-process): SQLite may already have rolled the transaction back, so every job committed
    together with it fails with JournalError and none of their rows exists; the writer thread
    then serves the next job."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await journal.record_event("pump-1", rate_changed(1, 2))

        def disk_full(_: Journal) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        # hold the writer in a job of its own so that the next three are committed together
        entered, release = threading.Event(), threading.Event()

        def hold(_: Journal) -> bool:
            entered.set()
            return release.wait(30)

        held = asyncio.ensure_future(journal._submit(hold))
        await asyncio.to_thread(entered.wait, 30)

        async def let_go() -> None:  # runs after the three jobs above it are queued
            release.set()

        *results, _ = await asyncio.gather(
            journal.record_event("pump-1", started()),
            journal._submit(disk_full),
            journal.append(JournalKind.STATE, {"ok": True}),
            let_go(),
            return_exceptions=True,
        )
        assert await held is True
        assert [type(r) for r in results] == [JournalError, JournalError, JournalError]
        assert "database or disk is full" in str(results[1])
        assert journal.seq == 1
        assert [r.n for r in await journal.rows()] == [1]
        assert (await journal.record_event("pump-1", started())).seq == 2
        assert (await journal.verify()).ok


def test_a_nested_transaction_is_refused_without_losing_the_outer_one(tmp_path: Path) -> None:
    """Opening a transaction inside another is a JournalError; the outer one still commits."""
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        with journal.transaction():
            journal.record_event("pump-1", rate_changed(1, 2), ts=T0)
            with (
                pytest.raises(JournalError, match="a transaction is already open"),
                journal.transaction(),
            ):
                pass
        assert journal.current_seq() == 1
        assert [r.n for r in journal.rows()] == [1]
    finally:
        journal.close()
