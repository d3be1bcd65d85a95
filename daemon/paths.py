"""Where infusiond keeps its state (journal, outbox), and checking that it can write there."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from protocol.errors import InfusiondError

JOURNAL_FILE = "journal.sqlite3"


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
