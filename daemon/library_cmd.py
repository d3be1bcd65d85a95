"""``infusiond library check [PATH] [--json]``: validate a drug library and its examples.

One ``LIB_*: message`` line per problem and exit 1 on any; otherwise one ``OK`` line with the
library's name, version and sha256 and the substance vocabulary's version and sha256, exit 0.
``--json`` prints one object instead: ``{"ok": bool, "path": str, "library": {"name",
"version", "sha256"} | null, "substances": {"path", "version", "sha256"} | null, "problems":
[{"rule", "message"}]}``. A file that cannot be loaded at all is reported as a ``LIB_LOAD``
problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protocol.consistency import LibraryProblem, check_library
from protocol.errors import LibraryError
from protocol.library import DEFAULT_LIBRARY_PATH, Library, load_library

EXIT_OK = 0
EXIT_PROBLEM = 1


def run(args: argparse.Namespace) -> int:
    """Load and check the library; print the result; 0 if consistent, 1 otherwise."""
    path = Path(args.path) if args.path else DEFAULT_LIBRARY_PATH
    library: Library | None = None
    try:
        library = load_library(path)
    except LibraryError as exc:
        problems = [LibraryProblem("LIB_LOAD", str(exc))]
    else:
        problems = check_library(library)
    if args.json:
        out = {
            "ok": not problems,
            "path": str(path),
            "library": None if library is None else library.identity.to_dict(),
            "substances": None
            if library is None
            else {
                "path": library.vocabulary.source,
                "version": library.vocabulary.version,
                "sha256": library.vocabulary.sha256,
            },
            "problems": [p.to_dict() for p in problems],
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    elif problems:
        sys.stdout.write("".join(f"{p}\n" for p in problems))
    else:
        assert library is not None  # no problems means it loaded
        ident = library.identity
        vocab = library.vocabulary
        drugs = sum(len(p.drugs) for p in library.profiles)
        sys.stdout.write(
            f"OK: {ident.name} {ident.version} sha256={ident.sha256} "
            f"({len(library.profiles)} profiles, {drugs} drug entries, "
            f"{len(library.examples)} examples checked; "
            f"substances {vocab.version} sha256={vocab.sha256})\n"
        )
    return EXIT_PROBLEM if problems else EXIT_OK
