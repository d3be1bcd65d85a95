"""Where infusiond keeps its state (journal, outbox), checking that it can write there, and the
data dir lock that keeps it to one daemon per journal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from protocol.errors import InfusiondError

JOURNAL_FILE = "journal.sqlite3"
# How long the journal keeps its rows unless ``[journal] retention_days`` says otherwise.
DEFAULT_RETENTION_DAYS = 90


class DataDirError(InfusiondError):
    """The data directory is missing, not a directory, or not writable; the message says which."""


def default_data_dir() -> Path:
    """``$XDG_STATE_HOME/infusiond``, else ``~/.local/state/infusiond`` (XDG base dir spec)."""
    state_home = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if Path(state_home).is_absolute() else Path.home() / ".local/state"
    return base / "infusiond"


def journal_path(data_dir: Path) -> Path:
    """The journal database inside ``data_dir``."""
    return data_dir / JOURNAL_FILE


def ensure_writable_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` if needed and prove it is writable; raise DataDirError otherwise."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"data dir {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise DataDirError(f"data dir {data_dir} is not writable: {exc.strerror}") from None
    return data_dir


LOCK_FILE = "infusiond.lock"


class DataDirLocked(DataDirError):
    """Another process holds the data dir's lock (one daemon per journal); ``pid`` is the
    holder's process id as it wrote it in the lock file (None if not written yet)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(f"data dir {data_dir} is in use by another infusiond ({holder})")
        self.data_dir = data_dir
        self.pid = pid


@dataclass
class _Held:
    fd: int
    count: int


# locks this process holds, by resolved data dir. flock() conflicts between two open file
# descriptions even in one process, so a second lock_data_dir() of the same dir here (the demo
# locks before its gateway opens the journal) shares the first one's descriptor instead.
_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


class DataDirLock:
    """This process's exclusive lock on a data dir (see :func:`lock_data_dir`); released by
    :meth:`release` or at the end of a ``with`` block, and by the kernel if the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._released = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the lock up (idempotent); the last holder in this process closes the file."""
        if self._released:
            return
        self._released = True
        with _HELD_GUARD:
            held = _HELD[self.data_dir]
            held.count -= 1
            if held.count == 0:
                del _HELD[self.data_dir]
                with contextlib.suppress(OSError):  # the pid is only a hint for the message
                    os.ftruncate(held.fd, 0)
                os.close(held.fd)


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the exclusive lock of ``data_dir`` (created if needed; DataDirError if unusable):
    ``flock`` on :data:`LOCK_FILE` in it, holding this process's pid. Never waits: raises
    :class:`DataDirLocked` naming the directory and the holder's pid when another process has
    it. Readers (``journal verify|export``) do not lock."""
    ensure_writable_dir(data_dir)
    key = data_dir.resolve()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
            return DataDirLock(key)
        lock_file = key / LOCK_FILE
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot open lock file {lock_file}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            raise DataDirLocked(data_dir, pid) from None
        except OSError as exc:
            os.close(fd)
            raise DataDirError(f"cannot lock {lock_file}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise DataDirError(f"cannot write lock file {lock_file}: {exc.strerror}") from None
        _HELD[key] = _Held(fd, 1)
        return DataDirLock(key)
