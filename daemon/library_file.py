"""Reading a drug library file from disk (protocol/ validates bytes and does no I/O)."""

from __future__ import annotations

from pathlib import Path

from protocol.errors import LibraryError
from protocol.library import MAX_LIBRARY_BYTES, Library, load_library_bytes
from protocol.substances import Vocabulary


def load_library(path: str | Path, vocabulary: Vocabulary | None = None) -> Library:
    """Read, validate and index the library file at ``path`` (blocking file I/O).

    Substance names are matched through ``vocabulary`` (default: the shipped one); a file that
    cannot be read is a :class:`LibraryError` naming it.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_LIBRARY_BYTES + 1)
    except OSError as exc:
        raise LibraryError(f"{p}: cannot read library file: {exc.strerror or exc}") from exc
    return load_library_bytes(data, str(p), vocabulary)
