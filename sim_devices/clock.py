"""Simulated time for the device simulators: real monotonic time scaled by ``speed``.

``SimClock(speed=60)`` makes one real second count as one simulated minute, so long scenarios
(VTBI running out, hepatorenal 4-hour windows) can be exercised quickly. ``now()`` is the
simulated monotonic time in seconds; ``sleep`` sleeps the corresponding real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SimClock:
    """Scaled monotonic clock. ``source`` is injectable for tests (a fake monotonic)."""

    speed: float = 1.0
    source: Callable[[], float] = field(default=time.monotonic, repr=False)
    _origin: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        self._origin = self.source()

    def now(self) -> float:
        """Simulated seconds since the clock was created."""
        return (self.source() - self._origin) * self.speed

    async def sleep(self, simulated_s: float) -> None:
        """Sleep for ``simulated_s`` of simulated time."""
        await asyncio.sleep(max(0.0, simulated_s) / self.speed)
