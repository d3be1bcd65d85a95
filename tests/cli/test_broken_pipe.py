"""`infusiond journal export | head` stops quietly when its reader goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.cli import EXIT_BROKEN_PIPE
from daemon.journal import AsyncJournal, JournalKind

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.mark.asyncio
async def test_export_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path) -> None:
    """The reader takes one line and closes the pipe: the export ends with exit 141 (128 +
    SIGPIPE, as `head` users expect) and nothing on stderr."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        for i in range(3000):  # far more than one pipe buffer of JSON lines
            await journal.append(JournalKind.VERDICT, {"i": i}, pump_id="pump-1", ts=T0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "journal", "export", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its line
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE == 141
    assert first.startswith(b'{"')
    assert err == b""
