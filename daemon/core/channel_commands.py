"""A channel's command side: a verified write under the channel's lock, the events it causes,
and the expectation an uncertain write leaves for the next snapshot to settle."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from daemon.base.events import PumpEvent
from daemon.base.quantities import Quantity
from daemon.core.channel_types import OUT_OF_LIBRARY, DoseConverter, DoseRecord, Hub
from daemon.core.program import Action, Program
from daemon.core.pump_events import rate_changed_event
from drivers.base import Driver, PumpStatus, WriteOutcome, WriteResult


class CommandExecution:
    """The command half of :class:`daemon.core.channel.Channel` (which owns the attributes and
    the poll side used here)."""

    driver: Driver
    hub: Hub
    program: Program
    dose_at: DoseConverter
    status: PumpStatus | None
    history: deque[DoseRecord]
    _lock: asyncio.Lock
    _uncertain: tuple[str, Decimal, Decimal] | None
    _uncertain_program: Program | None
    _deferred: list[PumpEvent] | None

    if TYPE_CHECKING:

        def dose_obj(self, rate_ml_h: Decimal) -> Quantity | None: ...

        async def _emit(self, event: PumpEvent) -> None: ...

        async def _absorb(self, status: PumpStatus) -> None: ...

        async def _set_daemon_alarm(
            self, code: str, *, active: bool, message: str = ""
        ) -> None: ...

        def _record_history(self, at: datetime, rate: Decimal) -> None: ...

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the channel for one command (the gate answers ``busy`` when taken)."""
        async with self._lock:
            yield

    async def execute(
        self,
        action: Action,
        command_id: str,
        rate_ml_h: Decimal | None = None,
        *,
        events: list[PumpEvent] | None = None,
    ) -> WriteResult:
        """Run a verified write; caller holds :meth:`exclusive`. Causes the one rate_changed.

        Only a ``set_rate`` can change the rate: a rate that a start, stop or pause reads back
        differently was changed at the device, and is judged as such (never credited).

        The events the write causes (the ``rate_changed``, alarms cleared, changes seen in the
        read-back) go to the hub, or, when ``events`` is given, are appended to it in order
        instead: the caller then journals them with the command's outcome in one transaction
        (and must do so before releasing :meth:`exclusive`, so that their seqs stay in order).
        """
        self._deferred = events
        try:
            return await self._execute(action, command_id, rate_ml_h)
        finally:
            self._deferred = None

    async def _execute(
        self, action: Action, command_id: str, rate_ml_h: Decimal | None
    ) -> WriteResult:
        old = self.status
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
            self._uncertain = (command_id, old.rate_ml_h, rate_ml_h)
        if result.readback is not None:
            now = self.hub.now()
            if (
                action is Action.SET_RATE
                and result.outcome is WriteOutcome.APPLIED
                and old is not None
                and result.readback.rate_ml_h != old.rate_ml_h
            ):
                await self._emit(
                    rate_changed_event(
                        old.rate_ml_h,
                        result.readback.rate_ml_h,
                        self.dose_obj,
                        command_id=command_id,
                    ),
                )
                self._record_history(now, result.readback.rate_ml_h)
                # the commanded rate is in library by construction: clear a stale alarm
                await self._set_daemon_alarm(OUT_OF_LIBRARY, active=False)
                self.status = replace(old, rate_ml_h=result.readback.rate_ml_h)
            await self._absorb(result.readback)
        return result

    def expect_uncertain(
        self,
        command_id: str,
        old_rate: Decimal | None,
        rate: Decimal | None,
        program: Program | None,
    ) -> None:
        """A write that may or may not have reached the device: the next snapshot that shows
        ``rate`` is attributed to ``command_id`` (reconciled), with its ``program``."""
        if old_rate is None or rate is None:
            return
        self._uncertain = (command_id, old_rate, rate)
        self._uncertain_program = program

    def set_program(self, program: Program) -> None:
        """Replace the program (after a verified ``program`` command)."""
        self.program = program
