"""An unusable data dir at start (not a directory, read-only, no space, not a journal) makes
``infusiond run`` exit 1 with one clear line naming the path and the reason: no traceback, no
half-started service. The daemon runs as a real subprocess; read-only and full disks are made
real as root too (an immutable directory via ``chattr +i``; a file-size limit, which makes the
kernel refuse writes with EFBIG exactly like a full disk refuses them with ENOSPC)."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import (
    NE_RATE_UP,
    REPO,
    bedside,
    command,
    probe,
    running_gateway,
    simulators,
    write_toml,
)
from tests.support.procs import Mosquitto


def run_daemon(
    tmp_path: Path, data_dir: Path | str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    config = write_toml(
        tmp_path / "infusiond.toml",
        {"gateway_id": "gw", "data_dir": str(data_dir), "broker": {"url": "mqtt://127.0.0.1:9"}},
    )
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=preexec,
    )


def assert_clear_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("infusiond: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)


def test_a_data_dir_below_a_regular_file_is_refused_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clear_failure(run_daemon(tmp_path, blocker / "data"), str(blocker), "Not a directory")


def test_a_data_dir_that_is_a_file_is_refused_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clear_failure(run_daemon(tmp_path, blocker), str(blocker), "not a directory")


def test_a_data_dir_on_a_pseudo_filesystem_is_refused_clearly(tmp_path: Path) -> None:
    assert_clear_failure(run_daemon(tmp_path, "/proc/infusiond-data"), "/proc/infusiond-data")


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
def test_a_read_only_data_dir_is_refused_clearly(tmp_path: Path) -> None:
    """An immutable directory cannot be written even by root: the same as a read-only mount."""
    data = tmp_path / "data"
    data.mkdir()
    try:
        with immutable(data):
            proc = run_daemon(tmp_path, data)
    except subprocess.CalledProcessError:
        pytest.skip("this filesystem does not support chattr +i")
    assert_clear_failure(proc, str(data), "not writable")


def test_a_full_disk_at_start_is_refused_clearly(tmp_path: Path) -> None:
    """No room for the journal: the child may write at most 8 KiB per file (RLIMIT_FSIZE),
    so SQLite cannot create the journal and the daemon says the journal is not usable."""

    def tiny_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    data = tmp_path / "data"
    assert_clear_failure(run_daemon(tmp_path, data, tiny_files), str(data), "not usable")


def test_a_data_dir_holding_something_that_is_not_a_journal_is_refused_clearly(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "journal.sqlite3").write_bytes(b"this is not sqlite" * 100)
    assert_clear_failure(run_daemon(tmp_path, data), "journal.sqlite3")


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
@pytest.mark.asyncio
async def test_a_journal_that_becomes_read_only_at_run_time_refuses_commands_until_writable(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """No journal, no command: when the journal files become unwritable while running (as when
    the filesystem is remounted read-only after an I/O error), a command is answered
    ``rejected`` with ``journal_unavailable`` and never reaches the pump; once the files are
    writable again, commands are served."""
    data = tmp_path / "data"
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=data)
        async with running_gateway(cfg), probe(mosquitto.url) as p:
            # the database and its WAL; not the -shm index, which SQLite maps into memory (a
            # write to a mapped page of an immutable file is a SIGBUS, not an error)
            files = [data / "journal.sqlite3", data / "journal.sqlite3-wal"]
            try:
                with contextlib.ExitStack() as stack:
                    for f in files:
                        stack.enter_context(immutable(f))
                    refused = command()
                    await p.send("pump-1", refused)
                    data_ = await p.result(refused["id"])
                    assert data_["phase"] == "rejected"
                    assert data_["error"]["code"] == "journal_unavailable"
                    assert bench.modbus.pump(1).writes == 0
            except subprocess.CalledProcessError:
                pytest.skip("this filesystem does not support chattr +i")
            served = command()
            await p.send("pump-1", served)
            await p.result(served["id"], "applied")
            assert bench.rate("pump-1") == NE_RATE_UP
