"""What a driver of one pump on a shared serial chain does the same for every vendor.

A :class:`ChainDriver` attaches to the chain's one :class:`SerialLine` (``shared_line``), counts
failed transactions (``offline_after`` in a row mark the pump offline; any answer brings it
online), keeps the alarm latch that :meth:`acknowledge_alarms` clears, and runs every write
through :func:`drivers.serial.verify.write_verified`. The capabilities follow from the syringe
diameter read at connect. A vendor supplies ``_execute`` (one command answered as executed, else
DriverError), ``_snapshot`` (the read-back), ``_read_identity`` and its syringe's rate limits and
resolution.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import ClassVar, Generic, TypeVar

from drivers.base import (
    AlarmCode,
    Capabilities,
    ConnectionState,
    Driver,
    Identity,
    WriteOutcome,
    WriteResult,
)
from drivers.errors import DeviceTimeout, DriverError, FrameError
from drivers.serial.line import PortUnavailable, SerialLine, release_line, shared_line
from drivers.serial.verify import Sent, Snapshot, not_sent, send_each, write_verified

L = TypeVar("L", bound=SerialLine)
C = TypeVar("C")
R = TypeVar("R")


class ChainDriver(Driver, Generic[L, C]):
    """One pump (address 0-99) on a serial chain shared with its peers."""

    supports_watchdog: ClassVar[bool]

    def __init__(
        self,
        url: str,
        address: int,
        *,
        line: L | None,
        offline_after: int,
        baudrate: int,
        timeout_s: float,
    ) -> None:
        if not 0 <= address <= 99:
            raise ValueError(f"{self.kind} address must be 0..99, got {address}")
        self.url = url
        self.address = address
        self._line = line
        self._offline_after = offline_after
        self._failures = 0
        self._state = ConnectionState.OFFLINE
        self._alarms: set[AlarmCode] = set()
        self._registered = False
        self._baudrate = baudrate
        self._timeout_s = timeout_s
        self._diameter: Decimal | None = None  # read at connect
        self._identity: Identity | None = None

    @property
    def connection(self) -> ConnectionState:
        if self._line is not None and self._line.state is not ConnectionState.ONLINE:
            return self._line.state
        return self._state

    @property
    def capabilities(self) -> Capabilities:
        if self._diameter is None:
            raise DriverError(f"pump {self.address:02d}: capabilities unknown before connect()")
        low, high = self._rate_limits(self._diameter)
        return Capabilities(
            min_rate_ml_h=low,
            max_rate_ml_h=high,
            resolution_ml_h=self._resolution(self._diameter),
            supports_watchdog=self.supports_watchdog,
            supports_vtbi=True,
        )

    async def identity(self) -> Identity:
        if self._identity is None:
            self._identity = await self._read_identity()
        return self._identity

    def _attach(self, kind: type[L]) -> L:
        """The chain's shared line (created on first use), counted as used by this pump."""
        if self._line is None:
            self._line = shared_line(
                kind, self.url, baudrate=self._baudrate, timeout_s=self._timeout_s
            )
        if not self._registered:
            self._line.users += 1
            self._registered = True
        self._state = ConnectionState.CONNECTING
        return self._line

    def _attached(self) -> L:
        """The line, or PortUnavailable ("not connected") before :meth:`connect`."""
        if self._line is None:
            raise PortUnavailable(f"pump {self.address:02d}: not connected (connect() first)")
        return self._line

    async def close(self) -> None:
        if self._line is not None and self._registered:
            self._registered = False
            await release_line(self._line)
        self._state = ConnectionState.OFFLINE

    async def acknowledge_alarms(self) -> WriteResult:
        """Clear the driver's latch; only queries go to the pump (latch kept if they fail)."""
        latched = set(self._alarms)
        self._alarms.clear()
        try:
            status = await self.read_status()
        except DriverError as exc:
            self._alarms |= latched
            return not_sent(f"read failed: {exc}")
        return WriteResult(WriteOutcome.APPLIED, status)

    async def _counted(self, exchange: Awaitable[R]) -> R:
        """Await one transaction, keeping the failure count and the connection state."""
        try:
            result = await exchange
        except PortUnavailable:
            self._state = ConnectionState.OFFLINE
            raise
        except (DeviceTimeout, FrameError):
            self._failures += 1
            if self._failures >= self._offline_after:
                self._state = ConnectionState.OFFLINE
            raise
        self._failures = 0
        self._state = ConnectionState.ONLINE
        return result

    @abc.abstractmethod
    async def _execute(self, command: C) -> object:
        """Send one command; return when the pump answered it as executed, else DriverError."""

    @abc.abstractmethod
    async def _snapshot(self) -> Snapshot:
        """Read the pump: the status and the device's own run state."""

    @abc.abstractmethod
    async def _read_identity(self) -> Identity:
        """Ask the pump for its model and firmware."""

    @abc.abstractmethod
    def _rate_limits(self, diameter_mm: Decimal) -> tuple[Decimal, Decimal]:
        """The lowest and highest rate (mL/h) the pump runs a syringe of this diameter at."""

    @abc.abstractmethod
    def _resolution(self, diameter_mm: Decimal) -> Decimal:
        """The rate step (mL/h) the pump can set with a syringe of this diameter."""

    async def _write_verified(
        self,
        commands: Sequence[C],
        ok: Callable[[Snapshot], bool],
        goal: str,
        *,
        precheck: Callable[[Snapshot], WriteResult | None] | None = None,
        again: Callable[[Snapshot], bool] | None = None,
    ) -> WriteResult:
        """:func:`drivers.serial.verify.write_verified` of ``commands``."""

        async def send() -> Sent:
            return await send_each(commands, self._execute)

        return await write_verified(
            self._snapshot, send, ok, goal, precheck=precheck, again=again, may_write=self.may_write
        )
