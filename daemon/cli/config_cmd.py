"""``infusiond config check --config PATH``: every problem of a configuration, not the first.

The same machinery as ``infusiond run``: :func:`daemon.base.config.load_config` (the file and the
``INFUSIOND_*`` environment), the signing keys it names, the drug library it names (loaded,
consistency-checked and, when required, signature-checked) and every pump's program against that
library. One line per problem, each naming its TOML location (``table.key``, ``pumps[0].drug``)
and the allowed values or limits; exit 0 when ``run`` would start, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.base.config import Config, load_config
from daemon.base.errors import ConfigError
from daemon.core.parts import configured_program, load_checked_library
from daemon.mqtt.signing import SignaturePolicy
from daemon.pharmacy.reload import LibraryRefused
from protocol.errors import InfusiondError
from protocol.library import Library

EXIT_OK = 0
EXIT_PROBLEM = 1


def reasons(exc: InfusiondError) -> list[str]:
    """Every problem an error carries (a refused library lists each failed step)."""
    if isinstance(exc, LibraryRefused):
        return list(exc.reasons)
    return list(exc.problems) or [str(exc)]


def config_problems(path: Path) -> tuple[Config | None, list[str]]:
    """The configuration at ``path`` (None if invalid) and every problem of it, including
    the command-signing keys it references."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, reasons(exc)
    try:
        SignaturePolicy.from_config(config.control.keys, require=config.control.require_signature)
    except ConfigError as exc:
        return None, reasons(exc)
    return config, []


def library_problems(config: Config) -> tuple[Library | None, list[str]]:
    """The configured library (None if refused) and every problem of it and of each pump's
    program against it (profile, drug, concentration unit), as ``run`` checks them."""
    try:
        library = load_checked_library(config)
    except InfusiondError as exc:
        return None, reasons(exc)
    problems: list[str] = []
    for index, pump in enumerate(config.pumps):
        try:
            configured_program(pump, library, index)
        except ConfigError as exc:
            problems.extend(reasons(exc))
    return library, problems


def run(args: argparse.Namespace) -> int:
    """Print ``ok`` and a summary, or every problem (one per line); exit 0 or 1."""
    path = Path(args.config)
    config, problems = config_problems(path)
    library: Library | None = None
    if config is not None:
        library, problems = library_problems(config)
    if problems:
        sys.stdout.write(f"config {path}: {len(problems)} problem(s)\n")
        sys.stdout.write("".join(f"  {problem}\n" for problem in problems))
        return EXIT_PROBLEM
    assert config is not None  # no problems: it loaded
    assert library is not None
    ident = library.identity
    sys.stdout.write(
        f"config {path}: ok (gateway {config.gateway_id}, {len(config.pumps)} pump(s), "
        f"{len(config.vitals)} vitals source(s); library {ident.name} {ident.version})\n"
    )
    return EXIT_OK
