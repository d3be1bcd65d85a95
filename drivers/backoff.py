"""Capped exponential backoff with full jitter, for reconnect loops.

Pure arithmetic: the caller sleeps (``await asyncio.sleep(backoff.next_delay())``) and calls
:meth:`Backoff.reset` after a success. ``rng`` is injectable so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay n is uniform in [initial * factor**n * (1 - jitter), same], capped at ``maximum``."""

    initial_s: float = 0.1
    maximum_s: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised (0 = none, 1 = full jitter)
    rng: Callable[[], float] = field(default=random.random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.maximum_s):
            raise ValueError("Backoff needs 0 < initial_s <= maximum_s")
        if self.factor < 1 or not (0 <= self.jitter <= 1):
            raise ValueError("Backoff needs factor >= 1 and 0 <= jitter <= 1")

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until capped."""
        base = min(self.maximum_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return base * (1 - self.jitter * self.rng())

    def reset(self) -> None:
        """Call after a successful attempt."""
        self.attempts = 0
