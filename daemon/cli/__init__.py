"""The ``infusiond`` console script: argument parsing and dispatch (:mod:`daemon.cli.app`) and
one module per subcommand (``run`` is :mod:`daemon.cli.service`, ``doctor``, ``check``,
``library``, ``journal``, ``config``).

``infusiond = daemon.cli:main`` and ``python -m daemon.cli`` both enter :func:`main`.
"""

from daemon.cli.app import (
    EXIT_BROKEN_PIPE,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    build_parser,
    main,
)

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "build_parser", "main"]
