"""Driver for Harvard Apparatus PHD ULTRA syringe pumps on a pump chain (RS-232/USB).

Writes follow the shared contract of :mod:`drivers.serial.verify`: pre-read, write, read back;
``applied`` / ``failed`` / ``uncertain``; writes never raise. What is PHD-specific:

**Snapshot.** ``irate`` (programmed infuse rate), ``status`` (the raw line: rate in fL/s, infused
volume in fL, stall flag) and ``tvolume`` (target). A rate write is ``applied`` only when
``irate`` reads back the value written *and*, while the pump infuses, the motor's own rate in
the ``status`` line matches it: the pump keeps what it was told and runs at it.

**State from the prompt.** Every reply ends in a prompt that carries the pump's state: ``>``
infusing; ``:`` idle and ``T*`` target reached are stopped; ``<`` (withdrawing: the motor draws
from the line) and ``*`` (stalled) are ``alarm`` (alarms ``withdrawing``, ``stalled``). The
stall (prompt ``*`` or the ``S`` flag of ``status``) is latched until the pump infuses again or
:meth:`acknowledge_alarms`. An infused volume that goes *down* without the driver asking means
the pump was reset (power loss): ``device_reset`` is latched the same way.

**Start, stop, pause.** :meth:`start` sends ``irun`` (never ``run``, which could withdraw).
:meth:`stop` sends ``stop``. The pump has no pause: :meth:`pause` stops an infusing pump and
says so; on a pump that is not infusing it is ``failed`` ("not sent").

**Capabilities** come from the configured syringe diameter (:mod:`drivers.phd.syringe`); at
:meth:`connect` the driver reads ``diameter`` and ``address`` and refuses (DriverError, nothing
written) a pump whose syringe or address is not the configured one.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import structlog

from drivers.base import (
    AlarmCode,
    Identity,
    PumpStatus,
    RunState,
    WriteResult,
)
from drivers.errors import DriverError, FrameError
from drivers.phd.errors import PhdRejected
from drivers.phd.grammar import (
    RATE_UNITS,
    VOLUME_UNITS,
    Command,
    Prompt,
    RawStatus,
    Reply,
    parse_quantity,
)
from drivers.phd.line import DEFAULT_BAUD, DEFAULT_TIMEOUT_S, PhdLine
from drivers.phd.syringe import rate_limits, resolution, valid_diameter
from drivers.serial.chain import ChainDriver
from drivers.serial.verify import Snapshot, not_sent

log = structlog.get_logger("drivers.phd")

#: run state of every prompt (a test iterates Prompt)
RUN_STATES = {
    Prompt.IDLE: RunState.STOPPED,
    Prompt.TARGET_REACHED: RunState.STOPPED,
    Prompt.INFUSING: RunState.INFUSING,
    Prompt.WITHDRAWING: RunState.ALARM,
    Prompt.STALLED: RunState.ALARM,
}
#: |motor rate - programmed rate| tolerated in the read-back (the status line truncates to fL/s)
RATE_MATCH_ML_H = Decimal("0.000001")
MAX_RATE_ML_H = Decimal(100_000)


class PhdPumpDriver(ChainDriver[PhdLine, Command]):
    """One pump (address 0-99) on a PHD ULTRA pump chain shared with its peers."""

    kind = "phd"
    supports_watchdog = False

    def __init__(
        self,
        url: str,
        address: int = 0,
        *,
        diameter_mm: Decimal | None = None,
        line: PhdLine | None = None,
        baudrate: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        offline_after: int = 3,
    ) -> None:
        super().__init__(
            url,
            address,
            line=line,
            offline_after=offline_after,
            baudrate=baudrate,
            timeout_s=timeout_s,
        )
        if diameter_mm is not None and not valid_diameter(diameter_mm):
            raise ValueError(f"syringe diameter {diameter_mm} mm outside 0.1..45.0 mm")
        self._configured_diameter = diameter_mm
        self._last_volume_fl: int | None = None
        self._last_raw: RawStatus | None = None

    # -- Driver contract ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the shared line; check address and syringe; read the version."""
        self._attach(PhdLine)
        said = (await self._execute(Command("address", "", self.address))).data
        if int(said) != self.address:
            raise DriverError(f"pump at {self.address:02d} says its address is {said}")
        text = (await self._execute(Command("diameter", "", self.address))).data
        diameter = Decimal(text.removesuffix(" mm"))
        wanted = self._configured_diameter
        if wanted is not None and abs(diameter - wanted) > Decimal("0.001"):
            raise DriverError(
                f"pump {self.address:02d} holds a {diameter} mm syringe, configured "
                f"{wanted} mm: check the syringe before use"
            )
        if not valid_diameter(diameter):
            raise DriverError(f"pump {self.address:02d}: diameter {diameter} mm out of range")
        self._diameter = diameter
        self._identity = await self._read_identity()

    async def _read_identity(self) -> Identity:
        return _identity(self.address, (await self._ver()).data)

    def _rate_limits(self, diameter_mm: Decimal) -> tuple[Decimal, Decimal]:
        return rate_limits(diameter_mm)

    def _resolution(self, diameter_mm: Decimal) -> Decimal:
        return resolution(diameter_mm)

    async def read_status(self) -> PumpStatus:
        return (await self._snapshot()).status

    async def set_rate(self, rate_ml_h: Decimal) -> WriteResult:
        """``irate <value> ml/hr``, then read back ``irate`` and ``status``."""
        try:
            text = self._encode_rate(rate_ml_h)
        except ValueError as exc:
            return not_sent(str(exc))
        expected = Decimal(text)

        def ok(s: Snapshot) -> bool:
            if s.status.rate_ml_h != expected:
                return False
            return s.device_state is not RunState.INFUSING or self._motor_matches(expected)

        return await self._write_verified(
            [Command("irate", f"{text} ml/hr", self.address)], ok, f"rate {expected} mL/h"
        )

    async def start(self) -> WriteResult:
        """``irun``; applied when the pump reads back infusing."""
        return await self._write_verified(
            [Command("irun", "", self.address)],
            lambda s: s.device_state is RunState.INFUSING,
            "infusing",
        )

    async def stop(self) -> WriteResult:
        """``stop``; applied when the pump reads back stopped."""
        return await self._write_verified(
            [Command("stop", "", self.address)],
            lambda s: s.device_state is RunState.STOPPED,
            "stopped",
        )

    async def pause(self) -> WriteResult:
        """The PHD ULTRA has no pause: an infusing pump is stopped, and the detail says so."""

        def precheck(now: Snapshot) -> WriteResult | None:
            if now.device_state is not RunState.INFUSING:
                return not_sent(
                    f"pump is {now.status.state.value} (the PHD ULTRA has no pause)", now.status
                )
            return None

        return await self._write_verified(
            [Command("stop", "", self.address)],
            lambda s: s.device_state is RunState.STOPPED,
            "stopped (the PHD ULTRA has no pause)",
            precheck=precheck,
        )

    # -- internals ----------------------------------------------------------------------------

    def _encode_rate(self, rate_ml_h: Decimal) -> str:
        """The ml/hr text for ``rate_ml_h``; ValueError naming the limit it breaks."""
        try:
            finite = rate_ml_h.is_finite()
        except (AttributeError, InvalidOperation):
            finite = False
        if not finite or rate_ml_h < 0 or rate_ml_h > MAX_RATE_ML_H:
            raise ValueError(f"rate {rate_ml_h} mL/h is not a rate in 0..{MAX_RATE_ML_H}")
        step = resolution(self._diameter) if self._diameter is not None else Decimal("0.01")
        if rate_ml_h != rate_ml_h.quantize(step):
            raise ValueError(f"rate {rate_ml_h} mL/h is finer than the pump step {step} mL/h")
        return f"{rate_ml_h.quantize(step):f}"

    def _motor_matches(self, expected: Decimal) -> bool:
        """Whether the motor rate of the read-back's ``status`` line is ``expected``."""
        status = self._last_raw
        if status is None or not status.infusing_direction:
            return False
        return abs(status.rate_ml_h - expected) <= RATE_MATCH_ML_H

    async def _ver(self) -> Reply:
        return await self._execute(Command("ver", "", self.address))

    async def _execute(self, command: Command) -> Reply:
        """One transaction; an error line is a :class:`PhdRejected`, a stall prompt latched."""
        reply = await self._counted(self._attached().transact(command))
        if reply.prompt is Prompt.STALLED:
            self._alarms.add(AlarmCode.STALLED)
        if reply.error is not None:
            raise PhdRejected(self.address, command.text(), reply.error)
        return reply

    async def _snapshot(self) -> Snapshot:
        rate = await self._execute(Command("irate", "", self.address))
        raw = await self._execute(Command("status", "", self.address))
        target = await self._execute(Command("tvolume", "", self.address))
        try:
            status = RawStatus.parse(raw.data)
            rate_ml_h = parse_quantity(rate.data, RATE_UNITS)
            vtbi = (
                None
                if target.data == "Target volume not set"
                else parse_quantity(target.data, VOLUME_UNITS)
            )
        except ValueError as exc:
            raise FrameError(f"pump {self.address:02d}: unreadable status data: {exc}") from exc
        self._last_raw = status
        return self._status(status, rate_ml_h, vtbi, target.prompt)

    def _status(
        self, raw: RawStatus, rate_ml_h: Decimal, vtbi: Decimal | None, prompt: Prompt
    ) -> Snapshot:
        if self._last_volume_fl is not None and raw.volume_fl < self._last_volume_fl:
            self._alarms.add(AlarmCode.DEVICE_RESET)
            log.warning("phd pump reset", address=self.address, volume_fl=raw.volume_fl)
        self._last_volume_fl = raw.volume_fl
        if raw.stalled:
            self._alarms.add(AlarmCode.STALLED)
        if prompt is Prompt.INFUSING:
            self._alarms.clear()  # infusing again: the latched alarm is over
        alarms = set(self._alarms)
        if prompt is Prompt.WITHDRAWING:
            alarms.add(AlarmCode.WITHDRAWING)
        if prompt is Prompt.STALLED:
            alarms.add(AlarmCode.STALLED)
        device_state = RUN_STATES[prompt]
        state = RunState.ALARM if alarms else device_state
        return Snapshot(
            PumpStatus(
                state=state,
                rate_ml_h=rate_ml_h,
                alarms=frozenset(alarms),
                vtbi_ml=vtbi or None,
                volume_infused_ml=raw.volume_ml if raw.infusing_direction else None,
            ),
            device_state,
        )


def _identity(address: int, version: str) -> Identity:
    return Identity(model="PHD ULTRA", serial=f"address-{address:02d}", firmware=version)
