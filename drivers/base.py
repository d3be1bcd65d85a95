"""The driver contract shared by every wire protocol.

Drivers do I/O and framing only: no policy, no MQTT, no drug library. Every write is followed by
a read-back and reported as a :class:`WriteResult` whose outcome is ``applied`` (read-back
matches), ``failed`` (the device refused; verified unchanged) or ``uncertain`` (no answer: the
channel reconciles on its next poll and must never blindly resend a rate).

Rates are ``Decimal`` mL/h and volumes ``Decimal`` mL so that device resolution (0.01) is exact.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal


class ConnectionState(enum.Enum):
    """Link state of one pump as seen by its driver."""

    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"


class RunState(enum.Enum):
    """What the pump is doing (the ``status`` of the public contract)."""

    STOPPED = "stopped"
    INFUSING = "infusing"
    PAUSED = "paused"
    ALARM = "alarm"


class AlarmCode(enum.Enum):
    """Device alarms, normalised across protocols (public ``alarms[].code`` strings)."""

    OCCLUSION = "occlusion"
    AIR_IN_LINE = "air_in_line"
    EMPTY = "empty"
    DOOR_OPEN = "door_open"
    LOW_BATTERY = "low_battery"
    COMM_TIMEOUT = "comm_timeout"
    NEAR_END = "near_end"
    HARDWARE_FAULT = "hardware_fault"
    DEVICE_RESET = "device_reset"  # New Era A?R: power-on reset
    STALLED = "stalled"  # New Era A?S: motor stalled
    PROGRAM_ERROR = "program_error"  # New Era A?E
    PHASE_OUT_OF_RANGE = "phase_out_of_range"  # New Era A?O
    HEARTBEAT_FROZEN = "heartbeat_frozen"  # detected by the driver, not reported by the device
    WITHDRAWING = "withdrawing"  # New Era W: the pump runs in reverse (not delivering)
    PURGING = "purging"  # New Era X: running at the purge rate, not the programmed one


class WriteOutcome(enum.Enum):
    """Result of a write, verified by reading the device back."""

    APPLIED = "applied"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class PumpStatus:
    """One consistent snapshot read from a pump."""

    state: RunState
    rate_ml_h: Decimal  # programmed rate (delivered while INFUSING)
    alarms: frozenset[AlarmCode] = frozenset()
    vtbi_ml: Decimal | None = None
    volume_infused_ml: Decimal | None = None
    battery_pct: int | None = None
    heartbeat: int | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """What the device says it is."""

    model: str
    serial: str
    firmware: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the device (or its driver) can do; used for PUMP_RANGE and UI hints."""

    min_rate_ml_h: Decimal
    max_rate_ml_h: Decimal
    resolution_ml_h: Decimal
    supports_watchdog: bool = False
    supports_vtbi: bool = True


@dataclass(frozen=True, slots=True)
class WriteResult:
    """WriteOutcome of a verified write: what happened and what the device reads back now."""

    outcome: WriteOutcome
    readback: PumpStatus | None = None
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


#: awaited by a driver after the pre-read of a write, with what the pre-read showed, and before
#: the write's first byte goes out; False aborts the write (``failed``, "not sent: ..."). The
#: gateway refuses there a write whose pump no longer runs what the command was checked against
#: (a front-panel change since the last poll), and journals that the write is being sent, so
#: that a restart can tell a write that never left from one that may have.
BeforeWrite = Callable[[PumpStatus], Awaitable[bool]]


class Driver(abc.ABC):
    """One pump on one transport. Implementations serialise access per physical bus."""

    #: short driver name published in ``pump.state.device.driver`` ("modbus", "newera", ...)
    kind: str = "abstract"
    #: set by the caller for the next write only (one write at a time per pump)
    before_write: BeforeWrite | None = None

    async def may_write(self, before: PumpStatus) -> bool:
        """Ask :attr:`before_write` (if set) whether the write may go out now, given what the
        pre-read showed (``before``)."""
        return self.before_write is None or await self.before_write(before)

    @property
    @abc.abstractmethod
    def connection(self) -> ConnectionState:
        """Current link state."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Rate range/resolution and optional features of the device."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the transport (shared bus transports are opened once)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the transport; idempotent."""

    @abc.abstractmethod
    async def identity(self) -> Identity:
        """Read model, serial and firmware."""

    @abc.abstractmethod
    async def read_status(self) -> PumpStatus:
        """Read one status snapshot. Raises DriverError (DeviceTimeout, FrameError, ...)."""

    @abc.abstractmethod
    async def set_rate(self, rate_ml_h: Decimal) -> WriteResult:
        """Program a new rate and verify it by read-back."""

    @abc.abstractmethod
    async def start(self) -> WriteResult:
        """Start (resume) delivery."""

    @abc.abstractmethod
    async def stop(self) -> WriteResult:
        """Stop delivery."""

    @abc.abstractmethod
    async def pause(self) -> WriteResult:
        """Pause delivery (where the device has no pause, stop is used and said so)."""

    async def acknowledge_alarms(self) -> WriteResult:
        """Acknowledge latched alarms, where the device supports it."""
        return WriteResult(WriteOutcome.FAILED, detail="not supported by this device")

    async def configure_watchdog(self, timeout_s: int) -> None:  # noqa: B027 - optional hook
        """Arm the device-side communication watchdog (0 disables); no-op where unsupported."""
