"""Virtual time for the fault simulator: an asyncio event loop whose clock only moves when
the loop has nothing else to do, and then jumps straight to the next timer.

Hand-written on purpose (no new dependency): ``asyncio.SelectorEventLoop`` asks its selector
to wait ``timeout`` seconds for I/O when no callback is ready; our selector polls the real one
without blocking and, when nothing is readable, advances the virtual clock by ``timeout``
instead of sleeping. ``loop.time()`` returns the virtual clock, so ``asyncio.sleep``,
``asyncio.timeout`` and every ``call_later`` run in virtual time: an hour of polling takes
milliseconds, and the same program always interleaves the same way.

Rules for code running on this loop: no threads doing work the loop waits for (the loop would
see "nothing to do" and jump ahead while the thread works; the simulator runs the journal's
jobs inline for that reason), and no real I/O with timeouts. A loop with no timer and nothing
ready would wait forever: :class:`VirtualTimeDeadlock` is raised instead.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

#: what the virtual wall clock reads at virtual time 0
EPOCH = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class VirtualTimeDeadlock(RuntimeError):
    """Every task waits and no timer is set: in real time the loop would block forever."""


class _VirtualSelector(selectors.BaseSelector):
    """Delegates registration to a real selector; ``select`` never blocks."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise VirtualTimeDeadlock(
                f"virtual time {self._loop.time():.3f} s: no callback ready, no timer set"
            )
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (seconds since :data:`EPOCH`)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (only the selector does this, when the loop is idle)."""
        if seconds > 0:
            self._now += seconds

    def wall_clock(self) -> datetime:
        """The virtual UTC wall clock, for code that takes a ``clock()``."""
        return EPOCH + timedelta(seconds=self._now)
