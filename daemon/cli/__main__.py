"""``python -m daemon.cli``: the same entry point as the ``infusiond`` console script."""

import sys

from daemon.cli.app import main

sys.exit(main())
