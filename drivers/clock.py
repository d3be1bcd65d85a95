"""The wall clock: the one place infusiond reads the time of day.

Drivers, simulators and the daemon take a ``now`` callable defaulting to :func:`utc_now`, so
tests pass a fake clock instead; ``protocol/`` has no clock at all (times are arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Now = Callable[[], datetime]
"""A clock: returns the current time, timezone-aware UTC."""


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
