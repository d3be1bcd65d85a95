"""``infusiond check``: one check request (JSON) on stdin -> the verdict JSON on stdout.

Exit 0 for any verdict (accept, confirm and reject are all answers); exit 2 with one line per
problem on stderr, each naming its field, when the input is not valid JSON or not a valid request
(a numeric field must be a JSON number: a quoted number, a boolean, NaN or an infinity is refused,
nothing is coerced). A library that cannot be loaded is an InfusiondError, reported by
``daemon.cli`` with exit 1. The request, the verdict and the library format are described in
docs/check.md.
"""

from __future__ import annotations

import argparse
import sys

from daemon.base.library_file import load_library
from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.library import DEFAULT_LIBRARY_PATH
from protocol.request import MAX_REQUEST_BYTES, parse_request_json

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def run(args: argparse.Namespace) -> int:
    """Read stdin, judge the request with the library, print the verdict."""
    library = load_library(args.library or DEFAULT_LIBRARY_PATH)
    data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    try:
        request = parse_request_json(data)
    except RequestError as exc:
        problems = exc.problems or (str(exc),)
        sys.stderr.write("".join(f"infusiond check: {problem}\n" for problem in problems))
        return EXIT_BAD_INPUT
    verdict = evaluate(library, request)
    sys.stdout.write(verdict.json_text(ensure_ascii=False) + "\n")
    return EXIT_OK
