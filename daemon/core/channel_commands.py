"""A channel's verified write: the driver's call for one action, the events it causes, and the
expectation an uncertain write leaves for the next snapshot to settle.

:class:`CommandExecutor` is the channel's collaborator for it; what it needs of the channel is
spelled out by :class:`WriteSite` (the channel implements it), so the write's bookkeeping can be
read here without the poll loop around it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from daemon.base.events import PumpEvent
from daemon.base.quantities import Quantity
from daemon.core.channel_alarms import PumpAlarms
from daemon.core.channel_types import OUT_OF_LIBRARY
from daemon.core.program import Action
from daemon.core.pump_events import rate_changed_event
from drivers.base import Driver, PumpStatus, WriteOutcome, WriteResult


class WriteSite(Protocol):
    """What a write reads and changes of its channel (implemented by
    :class:`daemon.core.channel.Channel`)."""

    status: PumpStatus | None

    def dose_obj(self, rate_ml_h: Decimal) -> Quantity | None: ...

    async def emit(self, event: PumpEvent) -> None: ...

    alarms: PumpAlarms

    def record_history(self, at: datetime, rate: Decimal) -> None: ...

    async def absorb(self, status: PumpStatus) -> None: ...

    def note_uncertain(self, command_id: str, old_rate: Decimal, rate: Decimal) -> None: ...

    def deferring(self, events: list[PumpEvent] | None) -> contextlib.AbstractContextManager[None]:
        """Inside, the channel's events are appended to ``events`` (when given) instead of
        being journaled by the channel."""
        ...


@dataclass(frozen=True, slots=True)
class CommandExecutor:
    """Runs the verified writes of one channel (see :meth:`execute`)."""

    driver: Driver
    site: WriteSite
    now: Callable[[], datetime]  # the hub's wall clock (event times)

    async def execute(
        self,
        action: Action,
        command_id: str,
        rate_ml_h: Decimal | None = None,
        *,
        events: list[PumpEvent] | None = None,
    ) -> WriteResult:
        """Run a verified write; caller holds the channel's ``exclusive()``. Causes the one
        rate_changed.

        Only a ``set_rate`` can change the rate: a rate that a start, stop or pause reads back
        differently was changed at the device, and is judged as such (never credited).

        The events the write causes (the ``rate_changed``, alarms cleared, changes seen in the
        read-back) go to the hub, or, when ``events`` is given, are appended to it in order
        instead: the caller then journals them with the command's outcome in one transaction
        (and must do so before releasing ``exclusive()``, so that their seqs stay in order).
        """
        with self.site.deferring(events):
            return await self._execute(action, command_id, rate_ml_h)

    async def _execute(
        self, action: Action, command_id: str, rate_ml_h: Decimal | None
    ) -> WriteResult:
        site = self.site
        old = site.status
        if action is Action.SET_RATE:
            if rate_ml_h is None:
                raise ValueError("SET_RATE needs a rate")
            result = await self.driver.set_rate(rate_ml_h)
        elif action is Action.START:
            result = await self.driver.start()
        elif action is Action.STOP:
            result = await self.driver.stop()
        else:
            result = await self.driver.pause()
        if result.outcome is WriteOutcome.UNCERTAIN and old is not None and rate_ml_h is not None:
            site.note_uncertain(command_id, old.rate_ml_h, rate_ml_h)
        if result.readback is not None:
            now = self.now()
            if (
                action is Action.SET_RATE
                and result.outcome is WriteOutcome.APPLIED
                and old is not None
                and result.readback.rate_ml_h != old.rate_ml_h
            ):
                await site.emit(
                    rate_changed_event(
                        old.rate_ml_h,
                        result.readback.rate_ml_h,
                        site.dose_obj,
                        command_id=command_id,
                    ),
                )
                site.record_history(now, result.readback.rate_ml_h)
                # the commanded rate is in library by construction: clear a stale alarm
                await site.alarms.set_daemon_alarm(OUT_OF_LIBRARY, active=False)
                site.status = replace(old, rate_ml_h=result.readback.rate_ml_h)
            await site.absorb(result.readback)
        return result
