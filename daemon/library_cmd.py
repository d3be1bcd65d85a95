"""``infusiond library check [PATH] [--json]``: validate a drug library and its examples.

One ``LIB_*: message`` line per problem and exit 1 on any; otherwise one ``OK`` line with the
library's name, version and sha256 and the substance vocabulary's version and sha256, exit 0.
``--json`` prints one object instead: ``{"ok": bool, "path": str, "library": {"name",
"version", "sha256"} | null, "substances": {"path", "version", "sha256"} | null, "problems":
[{"rule", "message"}]}``. A file that cannot be loaded at all is reported as one ``LIB_LOAD``
problem per reason (every one, not just the first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from daemon.library_file import load_library
from daemon.pharmacy.signing import (
    SignatureError,
    load_private_key,
    load_public_key,
    read_signature_file,
    sign_library,
    verify_library,
)
from protocol.consistency import LibraryProblem, check_library
from protocol.errors import LibraryError
from protocol.library import DEFAULT_LIBRARY_PATH, Library

EXIT_OK = 0
EXIT_PROBLEM = 1


def run(args: argparse.Namespace) -> int:
    """Load and check the library; print the result; 0 if consistent, 1 otherwise."""
    path = Path(args.path) if args.path else DEFAULT_LIBRARY_PATH
    library: Library | None = None
    try:
        library = load_library(path)
    except LibraryError as exc:
        problems = [LibraryProblem("LIB_LOAD", text) for text in exc.problems or (str(exc),)]
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


def _library_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LibraryError(f"library {path} cannot be read: {exc.strerror}") from None


def sign(args: argparse.Namespace) -> int:
    """``library sign KEY LIB [--out SIG]``: write the base64 Ed25519 signature of LIB."""
    path = Path(args.path)
    key = load_private_key(Path(args.key))
    signature = sign_library(key, _library_bytes(path))
    out = Path(args.out) if args.out else path.with_name(path.name + ".sig")
    out.write_text(signature + "\n", encoding="ascii")
    sys.stdout.write(f"signed {path} -> {out}\n")
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    """``library verify PUBKEY LIB SIG``: exit 0 when SIG is PUBKEY's signature of LIB."""
    path = Path(args.path)
    trusted = load_public_key(Path(args.pubkey))
    try:
        verify_library([trusted], _library_bytes(path), read_signature_file(Path(args.signature)))
    except SignatureError as exc:
        sys.stdout.write(f"BAD: {path}: {exc}\n")
        return EXIT_PROBLEM
    sys.stdout.write(f"OK: {path} signed by key {trusted.fingerprint}\n")
    return EXIT_OK
