"""Driver for New Era NE-500/NE-1000-family syringe pumps (RS-232, basic and safe mode).

WriteOutcome semantics are the shared write contract of :mod:`drivers.serial.verify` (pre-read,
write, read back; ``applied`` / ``failed`` / ``uncertain``; writes never raise). For
:meth:`pause`, a pump that is not infusing is ``failed`` ("not sent"); a refusal is judged on
rate and run state as the pump's own status letter shows them, not the driver's alarm latch.

**Pause and stop.** The pump has a single ``STP`` command: it *pauses* a pumping program
(status ``P``, resumable with ``RUN``) and *stops* a paused one (status ``S``). :meth:`pause`
sends ``STP`` once and expects ``P``; :meth:`stop` sends ``STP`` and, if the pump then reads
back ``P`` (whatever it answered to the first), a second ``STP``, and expects ``S``. Both
report exactly what the pump reads back.

**Status letters.** ``I`` is infusing; ``S`` stopped; ``P`` (paused), ``T`` (a pause phase of
a program) and ``U`` (waiting for the user) are paused: nothing is delivered. ``W`` (withdrawing:
the motor runs in reverse and draws from the line) and ``X`` (purging: running at the maximum
rate, not the programmed one) are *not* reported as infusing: the state is ``alarm`` with the
alarm ``withdrawing`` or ``purging``, since the gateway cannot vouch for what reaches the patient.
Any other letter, or an alarm letter other than R/S/T/E/O, is a :class:`FrameError`.

**Alarms.** The pump reports an alarm once, in the reply to the next command (``A?R``,
``A?S``, ``A?T``, ``A?E``, ``A?O``). The driver latches it: :attr:`PumpStatus.alarms` keeps it
and the state reads ``alarm`` until the pump is pumping again or :meth:`acknowledge_alarms`.

**Safe mode.** :meth:`configure_watchdog` sends ``SAF<n>``; with n > 0 all further traffic
uses CRC-checked safe packets and the pump stops with ``A?T`` when no valid packet arrives for
n seconds. The driver does not run a timer of its own: the channel's polls keep the link alive,
so a dead or hung gateway stops the pump. Poll at least every n/2 seconds.

**Capabilities** are derived from the syringe diameter read with ``DIA`` at :meth:`connect`
(see :mod:`drivers.newera.syringe` for the plunger-speed assumption). The resolution is
0.01 mL/h below 100 mL/h; above, the 4-digit format limits it (``encode_rate`` picks the unit
with the least rounding, and the read-back reports the value actually held).
"""

from __future__ import annotations

from decimal import Decimal

import structlog

from drivers.base import (
    AlarmCode,
    Identity,
    PumpStatus,
    RunState,
    WriteOutcome,
    WriteResult,
)
from drivers.errors import DeviceRejected, DeviceTimeout, DriverError, FrameError
from drivers.newera.errors import REJECTIONS, NotRepresentable
from drivers.newera.frames import Command, Reply, Status
from drivers.newera.numbers import RateUnit, VolumeUnit, encode_rate, parse_float
from drivers.newera.port import DEFAULT_BAUD, DEFAULT_TIMEOUT_S, NewEraPort
from drivers.newera.syringe import rate_limits
from drivers.serial.chain import ChainDriver
from drivers.serial.verify import Snapshot, not_sent

log = structlog.get_logger("drivers.newera")

MAX_WATCHDOG_S = 255
RESOLUTION_ML_H = Decimal("0.01")

#: run state of every status letter (a test iterates Status); see the module doc
RUN_STATES = {
    Status.INFUSING: RunState.INFUSING,
    Status.PURGING: RunState.ALARM,  # running at the purge rate, not the programmed one
    Status.WITHDRAWING: RunState.ALARM,  # running in reverse: not delivering
    Status.STOPPED: RunState.STOPPED,
    Status.PAUSED: RunState.PAUSED,
    Status.PAUSE_PHASE: RunState.PAUSED,
    Status.USER_WAIT: RunState.PAUSED,
    Status.ALARM: RunState.ALARM,
}
#: the alarm a status letter itself stands for (the pump is running, but not infusing)
STATUS_ALARMS = {
    Status.WITHDRAWING: AlarmCode.WITHDRAWING,
    Status.PURGING: AlarmCode.PURGING,
}


class AlarmReported(DeviceRejected):
    """The pump reported a latched alarm in place of executing the command."""


class NewEraPumpDriver(ChainDriver[NewEraPort, Command]):
    """One pump (address 0-99) on a New Era serial line shared with its daisy-chain peers."""

    kind = "newera"
    supports_watchdog = True

    def __init__(
        self,
        url: str,
        address: int = 0,
        *,
        port: NewEraPort | None = None,
        baudrate: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        watchdog_s: int = 0,
        offline_after: int = 3,
    ) -> None:
        super().__init__(
            url,
            address,
            line=port,
            offline_after=offline_after,
            baudrate=baudrate,
            timeout_s=timeout_s,
        )
        self._watchdog_s = watchdog_s
        self._safe = False

    # -- Driver contract ----------------------------------------------------------------------

    @property
    def safe_mode(self) -> bool:
        """Whether traffic to this pump uses safe-mode packets."""
        return self._safe

    async def connect(self) -> None:
        """Open the shared port, find the pump's mode, read diameter and version."""
        self._attach(NewEraPort)
        await self._probe_mode()
        dia = (await self._read("DIA")).data
        try:
            self._diameter = parse_float(dia)
        except ValueError as exc:
            raise FrameError(f"pump {self.address:02d}: unreadable diameter: {exc}") from exc
        self._identity = await self._read_identity()
        if self._watchdog_s:
            await self.configure_watchdog(self._watchdog_s)

    async def _read_identity(self) -> Identity:
        return _identity(self.address, (await self._read("VER")).data)

    def _rate_limits(self, diameter_mm: Decimal) -> tuple[Decimal, Decimal]:
        return rate_limits(diameter_mm)

    def _resolution(self, _diameter_mm: Decimal) -> Decimal:
        return RESOLUTION_ML_H  # the same step for every syringe

    async def read_status(self) -> PumpStatus:
        """``RAT`` (rate), ``DIS`` (volume dispensed) and ``VOL`` (target); status of the last."""
        return (await self._snapshot()).status

    async def set_rate(self, rate_ml_h: Decimal) -> WriteResult:
        """``RAT <float><unit>``, then read back; see the module doc for the outcomes."""
        try:
            text, unit = encode_rate(rate_ml_h)
        except NotRepresentable as exc:
            return not_sent(str(exc))
        expected = Decimal(text) * unit.ml_h
        return await self._write_verified(
            [Command("RAT", text + unit.value, self.address)],
            lambda s: s.status.rate_ml_h == expected,
            f"rate {expected} mL/h",
        )

    async def start(self) -> WriteResult:
        """``DIR INF`` then ``RUN``; applied when the pump reads back infusing."""
        return await self._write_verified(
            [Command("DIR", "INF", self.address), Command("RUN", "", self.address)],
            lambda s: s.device_state is RunState.INFUSING,
            "infusing",
        )

    async def stop(self) -> WriteResult:
        """``STP`` (and a second ``STP`` if the first only paused); applied when stopped."""
        return await self._write_verified(
            [Command("STP", "", self.address)],
            lambda s: s.device_state is RunState.STOPPED,
            "stopped",
            again=lambda s: s.device_state is RunState.PAUSED,
        )

    async def pause(self) -> WriteResult:
        """``STP`` once while pumping (the pump's pause); a stopped pump cannot be paused."""

        def precheck(now: Snapshot) -> WriteResult | None:
            if now.device_state is RunState.PAUSED:
                return WriteResult(WriteOutcome.APPLIED, now.status, detail="already paused")
            if now.device_state is not RunState.INFUSING:
                return not_sent(f"pump is {now.status.state.value}", now.status)
            return None

        return await self._write_verified(
            [Command("STP", "", self.address)],
            lambda s: s.device_state is RunState.PAUSED,
            "paused",
            precheck=precheck,
        )

    async def configure_watchdog(self, timeout_s: int) -> None:
        """``SAF<n>``: n > 0 enters safe mode with an n-second comm timeout, 0 leaves it.

        Before :meth:`connect` the value is remembered and applied by ``connect``.
        """
        if not 0 <= timeout_s <= MAX_WATCHDOG_S:
            raise DriverError(f"safe-mode timeout must be 0..{MAX_WATCHDOG_S} s, got {timeout_s}")
        if not self._registered:
            self._watchdog_s = timeout_s
            return
        command = Command("SAF", str(timeout_s), self.address)
        try:
            await self._execute(command)
        except (DeviceTimeout, FrameError):
            await self._probe_mode()  # the reply was lost: find out which mode it is in
            raise
        self._safe = timeout_s > 0
        self._watchdog_s = timeout_s
        log.info("newera safe mode", address=self.address, timeout_s=timeout_s)

    # -- internals ----------------------------------------------------------------------------

    async def _transact(self, command: Command, *, safe: bool | None = None) -> Reply:
        line = self._attached()
        mode = self._safe if safe is None else safe
        reply = await self._counted(line.transact(command, safe=mode))
        if reply.alarm is not None:
            self._alarms.add(reply.alarm.code)
            log.warning("newera alarm", address=self.address, alarm=reply.alarm.meaning)
        if reply.error is not None:
            raise REJECTIONS[reply.error](self.address, command.text())
        return reply

    async def _probe_mode(self) -> None:
        """Status query in the current mode, else in the other; adopt the one that answers."""
        try:
            await self._transact(Command("", "", self.address))
        except (DeviceTimeout, FrameError) as first:
            try:
                await self._transact(Command("", "", self.address), safe=not self._safe)
            except (DeviceTimeout, FrameError):
                raise first from None
            self._safe = not self._safe

    async def _read(self, name: str) -> Reply:
        """A query; re-asked once when the pump answered with an alarm instead of data."""
        command = Command(name, "", self.address)
        reply = await self._transact(command)
        if reply.alarm is not None:
            reply = await self._transact(command)
        return reply

    async def _execute(self, command: Command) -> Reply:
        reply = await self._transact(command)
        if reply.alarm is not None:
            raise AlarmReported(
                f"pump {self.address:02d} reported {reply.alarm.meaning} instead of "
                f"executing {command.text()!r}"
            )
        return reply

    async def _snapshot(self) -> Snapshot:
        rat = await self._read("RAT")
        dis = await self._read("DIS")
        vol = await self._read("VOL")
        return self._status(rat, dis, vol)

    def _status(self, rat: Reply, dis: Reply, vol: Reply) -> Snapshot:
        status = vol.status if vol.alarm is None else Status.STOPPED
        running = status in (Status.INFUSING, Status.WITHDRAWING, Status.PURGING)
        if running:
            self._alarms.clear()  # pumping again: the latched alarm is over
        alarms = set(self._alarms)
        if (own := STATUS_ALARMS.get(status)) is not None:
            alarms.add(own)
        device_state = RUN_STATES[status]
        state = RunState.ALARM if alarms else device_state
        try:
            rate = parse_float(rat.data[:-2]) * RateUnit(rat.data[-2:]).ml_h
            infused_text = dis.data[1:].split("W", 1)[0]
            dis_unit = VolumeUnit(dis.data[-2:])
            infused = parse_float(infused_text) * dis_unit.ml
            vol_unit = VolumeUnit(vol.data[-2:])
            target = parse_float(vol.data[:-2]) * vol_unit.ml
        except ValueError as exc:
            raise FrameError(f"pump {self.address:02d}: unreadable status data: {exc}") from exc
        return Snapshot(
            PumpStatus(
                state=state,
                rate_ml_h=rate,
                alarms=frozenset(alarms),
                vtbi_ml=target or None,
                volume_infused_ml=infused,
            ),
            device_state,
        )


def _identity(address: int, version: str) -> Identity:
    model, _, firmware = version.partition("V")
    return Identity(model=model or version, serial=f"address-{address:02d}", firmware=firmware)
