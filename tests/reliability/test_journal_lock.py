"""One daemon per journal: ``run`` and ``demo`` hold an exclusive lock on the data directory
(``flock`` on ``infusiond.lock`` in it, holding their pid). A second instance on the same
directory exits 1 at once with one line naming the directory and the holder's pid, before it
starts anything; the read-only tools (``journal verify|export``) work beside the holder; the
lock dies with its process (a SIGKILLed daemon leaves no stale lock behind).

Every daemon here is a real ``python -m daemon.cli`` process; readiness is ``READY=1`` on a
notify socket, as systemd would see it. The configuration has no pumps and an unreachable
broker, so the daemon is ready as soon as its journal is open."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daemon.base.paths import LOCK_FILE, DataDirLocked, lock_data_dir
from tests.reliability.harness import REPO, write_toml

CLI = [sys.executable, "-m", "daemon.cli"]
SECOND_INSTANCE_TIMEOUT_S = 15.0
_started = itertools.count()


def config(tmp_path: Path, data_dir: Path) -> Path:
    return write_toml(
        tmp_path / "infusiond.toml",
        {"gateway_id": "gw", "data_dir": str(data_dir), "broker": {"url": "mqtt://127.0.0.1:9"}},
    )


@contextmanager
def ready_daemon(tmp_path: Path, config_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``infusiond run`` until READY=1 (it then holds the lock); stopped with SIGTERM."""
    notify_path = tmp_path / f"notify-{next(_started)}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        with (tmp_path / "daemon.log").open("wb") as log:
            proc = subprocess.Popen(
                [*CLI, "run", "--config", str(config_path)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            )
            try:
                while b"READY=1" not in notify.recv(4096).split(b"\n"):
                    pass
                yield proc
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=20)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECOND_INSTANCE_TIMEOUT_S,
        check=False,
    )


def assert_refused_naming(proc: subprocess.CompletedProcess[str], data_dir: Path, pid: int) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"infusiond: error: data dir {data_dir} is in use by another infusiond (pid {pid})"
    ], proc.stderr


def test_a_second_daemon_on_the_same_data_dir_exits_1_naming_the_dir_and_the_holder(
    tmp_path: Path,
) -> None:
    """While one ``run`` holds the directory, a second ``run`` and a ``demo`` on it each exit
    1 within seconds with one line naming the directory and the first daemon's pid; ``journal
    verify`` and ``export`` read it meanwhile. Once the first stops, a new daemon starts."""
    data_dir = tmp_path / "data"
    cfg = config(tmp_path, data_dir)
    with ready_daemon(tmp_path, cfg) as first:
        assert (data_dir / LOCK_FILE).read_text().strip() == str(first.pid)
        assert_refused_naming(run_cli("run", "--config", str(cfg)), data_dir, first.pid)
        assert_refused_naming(run_cli("demo", "--data-dir", str(data_dir)), data_dir, first.pid)
        verify = run_cli("journal", "verify", "--data-dir", str(data_dir))
        assert verify.returncode == 0, verify.stderr
        assert ": ok, " in verify.stdout
        export = run_cli("journal", "export", "--data-dir", str(data_dir))
        assert export.returncode == 0, export.stderr
        assert first.poll() is None  # the holder was not disturbed
    assert first.returncode == 0
    with ready_daemon(tmp_path, cfg) as second:
        assert (data_dir / LOCK_FILE).read_text().strip() == str(second.pid)


def test_a_killed_daemon_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL cannot clean up, but the kernel drops a flock with its process: the next daemon
    starts although the lock file still names the dead pid."""
    data_dir = tmp_path / "data"
    cfg = config(tmp_path, data_dir)
    with ready_daemon(tmp_path, cfg) as first:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (data_dir / LOCK_FILE).read_text().strip() == str(first.pid)
    with ready_daemon(tmp_path, cfg) as second:
        assert (data_dir / LOCK_FILE).read_text().strip() == str(second.pid)


def test_the_lock_is_shared_within_one_process_and_refused_to_another(tmp_path: Path) -> None:
    """The demo locks before its gateway opens the journal: in one process a second lock of
    the same directory (by any spelling of its path) shares the first, and the directory is
    free only when both are released. Another process is refused meanwhile."""
    data_dir = tmp_path / "data"
    outer = lock_data_dir(data_dir)
    inner = lock_data_dir(tmp_path / "." / "data")
    probe = [
        sys.executable,
        "-c",
        (
            "import sys; from pathlib import Path; from daemon.base.paths import lock_data_dir;"
            " lock_data_dir(Path(sys.argv[1])); print('locked')"
        ),
        str(data_dir),
    ]
    try:
        inner.release()
        refused = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, check=False)
        assert refused.returncode == 1
        assert f"DataDirLocked: data dir {data_dir} is in use" in refused.stderr
        assert f"(pid {os.getpid()})" in refused.stderr
    finally:
        outer.release()
    taken = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, check=False)
    assert taken.stdout == "locked\n", taken.stderr


def test_a_lock_refused_in_process_carries_the_holder_pid(tmp_path: Path) -> None:
    """DataDirLocked is a DataDirError carrying the directory and the pid, for callers."""
    data_dir = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; from daemon.base.paths import lock_data_dir;"
                " lock_data_dir(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()"
            ),
            str(data_dir),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(DataDirLocked) as exc:
            lock_data_dir(data_dir)
        assert exc.value.pid == holder.pid
        assert exc.value.data_dir == data_dir
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()  # type: ignore[union-attr]
