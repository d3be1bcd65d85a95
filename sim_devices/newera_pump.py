"""Device model of one New Era NE-1000-family syringe pump (no I/O; time is an argument).

Behaviour kept simple and documented (the simulator is a tool for biomed benches too):

* Commands are normalised as the pump does (spaces stripped, upper case); an unknown command or
  parameters of the wrong shape answer ``?``; a value outside the device range ``?OOR``; a
  command not allowed in the current state ``?NA`` (``DIA`` while pumping, ``RUN`` with no rate).
* ``STP`` pauses a pumping program (``P``) and stops a paused one (``S``); ``RUN`` starts from
  ``S`` (new phase: the ``VOL`` target counts from there) or resumes from ``P``.
* ``RAT`` may be changed while pumping (as NE-1000 firmware 3.x allows); rates are checked
  against the syringe limits of :mod:`drivers.newera.syringe`.
* ``VOL`` is the volume to be dispensed in the current phase (0 = no limit); when reached the
  pump stops. ``DIS`` integrates the rate over (simulated) time, per direction.
* Alarms are latched and reported once: the reply to the next command carries ``A?<x>`` in place
  of the status, that command is **not executed** (the client re-sends it after seeing the
  alarm), and the alarm is then cleared. A freshly powered pump holds ``A?R`` until its first
  command; a stall stops the pump with ``A?S``; in safe mode, ``n`` seconds without a valid
  packet stop the pump with ``A?T``.
* Safe mode (``SAF n``, n > 0): the pump answers safe packets with safe packets; a basic-mode
  command is answered ``?COM`` (in a safe packet) and not executed. A valid safe packet is
  executed in either mode, so ``SAF0`` in a safe packet returns a pump to basic mode.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal

from drivers.newera.commands import COMMANDS
from drivers.newera.frames import ERROR_CODES, Alarm, Command, Reply, Status
from drivers.newera.numbers import (
    RateUnit,
    VolumeUnit,
    encode_rate,
    format_float,
    parse_float,
)
from drivers.newera.syringe import rate_limits, valid_diameter, volume_unit
from sim_devices.serial_pump import FaultArming

FIRMWARE = "NE1000V3.928"
MAX_SAFE_TIMEOUT_S = 255
_MAX_FLOAT = Decimal(9999)


class Fault(enum.Enum):
    """Faults of the reply path, consumed one per reply (``count``) or until cleared."""

    SILENCE = "silence"  # deaf: the command is not executed and nothing is answered
    DROP_REPLY = "drop-reply"  # the command is executed, its reply is lost
    GARBLE = "garble"  # one reply byte corrupted (bad character / bad CRC)
    TRUNCATE = "truncate"  # the last two bytes of the reply are lost
    WRONG_ADDRESS = "wrong-address"  # the reply carries another pump's address
    OVERLONG = "overlong"  # the reply is a run of bytes that never ends in ETX
    SLOW = "slow"  # the reply is sent after ``reply_delay_s`` (real seconds)
    REJECT = "reject"  # the command is answered with ``reject_with`` (e.g. ?IGN), not executed
    # the command is executed, yet answered with ``reject_with`` (?OOR, ?NA, ... or A?R, A?S ...)
    REFUSE_BUT_APPLY = "refuse-but-apply"
    HANG_UP = "hang-up"  # the command is executed, then the line drops without a reply
    NOISE = "noise"  # a corrupted copy of the reply (bad character / bad CRC) comes first


#: what ``reject_with`` may be: an error code in the data, or an alarm in place of the status
REFUSALS = (*ERROR_CODES, *(f"A?{alarm.value}" for alarm in Alarm))


@dataclass(frozen=True)
class NewEraPumpSetup:
    """Initial state of a simulated pump (API and CLI)."""

    address: int = 0
    diameter_mm: Decimal = Decimal("26.59")  # BD 60 mL
    rate_ml_h: Decimal = Decimal(0)
    running: bool = False
    vtbi_ml: Decimal = Decimal(0)
    reset_alarm: bool = True  # hold A?R until the first command, as after power-on


@dataclass
class NewEraPumpModel(FaultArming[Fault, Command]):
    """State of one pump. Call :meth:`advance` with the simulated time before reading state."""

    setup: NewEraPumpSetup
    now: float = 0.0
    status: Status = Status.STOPPED
    direction: str = "INF"
    diameter_mm: Decimal = Decimal(0)
    rate_value: Decimal = Decimal(0)
    rate_unit: RateUnit = RateUnit.ML_H
    target_ml: Decimal = Decimal(0)  # VOL, 0 = no limit
    phase_ml: Decimal = Decimal(0)  # dispensed since the last RUN from stopped
    infused_ml: Decimal = Decimal(0)
    withdrawn_ml: Decimal = Decimal(0)
    alarm: Alarm | None = None
    safe_timeout_s: int = 0
    last_valid_packet: float = 0.0
    faults: dict[Fault, int | None] = field(default_factory=dict)
    fault_on: dict[Fault, str] = field(default_factory=dict)
    reply_delay_s: float = 0.0
    reject_with: str = "?IGN"
    commands_seen: int = 0

    def __post_init__(self) -> None:
        s = self.setup
        if not valid_diameter(s.diameter_mm):
            raise ValueError(f"diameter {s.diameter_mm} mm outside 0.1..50.0")
        self.diameter_mm = s.diameter_mm
        if s.rate_ml_h:
            text, self.rate_unit = encode_rate(s.rate_ml_h)
            self.rate_value = Decimal(text)
        self.target_ml = s.vtbi_ml
        self.status = Status.INFUSING if s.running else Status.STOPPED
        self.alarm = Alarm.RESET if s.reset_alarm else None
        self.last_valid_packet = self.now

    @property
    def address(self) -> int:
        return self.setup.address

    @property
    def rate_ml_h(self) -> Decimal:
        """The programmed rate in mL/h."""
        return self.rate_value * self.rate_unit.ml_h

    @property
    def delivering_ml_h(self) -> Decimal:
        """What goes into the line right now (0 unless infusing)."""
        return self.rate_ml_h if self.status is Status.INFUSING else Decimal(0)

    @property
    def volume_unit(self) -> VolumeUnit:
        return volume_unit(self.diameter_mm)

    # -- time ---------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Integrate delivery up to ``now`` (simulated s); apply VOL end and safe-mode timeout."""
        dt = max(0.0, now - self.now)
        self.now = max(self.now, now)
        if self.status in (Status.INFUSING, Status.WITHDRAWING) and dt > 0:
            dv = self.rate_ml_h * Decimal(repr(dt)) / 3600
            if self.target_ml and self.phase_ml + dv >= self.target_ml:
                dv = max(Decimal(0), self.target_ml - self.phase_ml)
                self.status = Status.STOPPED
            self.phase_ml += dv
            if self.direction == "INF":
                self.infused_ml += dv
            else:
                self.withdrawn_ml += dv
        if (
            self.safe_timeout_s
            and self.now - self.last_valid_packet >= self.safe_timeout_s
            and self.alarm is not Alarm.COMM_TIMEOUT
        ):
            self.raise_alarm(Alarm.COMM_TIMEOUT)
            self.last_valid_packet = self.now  # one alarm per silent period

    # -- front panel and physical events ------------------------------------------------------

    def raise_alarm(self, alarm: Alarm) -> None:
        """Stop pumping and latch ``alarm`` (stall, comm timeout, program error, ...)."""
        self.status = Status.STOPPED
        self.alarm = alarm

    def stall(self) -> None:
        """The motor stalls: pumping stops with ``A?S`` latched."""
        self.raise_alarm(Alarm.STALLED)

    def power_reset(self) -> None:
        """Power interruption: pumping stops; the program is kept; ``A?R`` is latched."""
        self.raise_alarm(Alarm.RESET)

    def front_panel_rate(self, rate_ml_h: Decimal) -> None:
        """Someone changed the rate at the keypad."""
        text, self.rate_unit = encode_rate(rate_ml_h)
        self.rate_value = Decimal(text)

    def front_panel_run(self) -> None:
        self.status = Status.INFUSING if self.direction == "INF" else Status.WITHDRAWING

    def front_panel_stop(self) -> None:
        self.status = Status.STOPPED

    # -- reply faults (FaultArming) -----------------------------------------------------------

    command_names = COMMANDS

    def command_key(self, name: str) -> str:
        return name.upper()

    def is_write(self, command: Command) -> bool:
        return is_write(command)

    # -- commands -----------------------------------------------------------------------------

    def handle(self, command: Command, now: float, *, safe: bool) -> Reply:
        """Execute one command received at ``now``; ``safe`` says it came in a valid packet."""
        self.advance(now)
        self.commands_seen += 1
        if safe:
            self.last_valid_packet = self.now
        elif self.safe_timeout_s:
            return self._reply("?COM")
        if self.alarm is not None:
            alarm, self.alarm = self.alarm, None
            return Reply(self.address, Status.ALARM, alarm=alarm)
        if self.take_fault(Fault.REJECT, command):
            return self._refusal()
        refuse = self.take_fault(Fault.REFUSE_BUT_APPLY, command)
        spec = COMMANDS.get(command.name)
        if spec is None or not spec.accepts(command.params):
            return self._reply("?")
        handler = getattr(self, f"_cmd_{command.name or 'status'}".lower())
        data: str = handler(command.params)
        return self._refusal() if refuse else self._reply(data)

    def _reply(self, data: str) -> Reply:
        return Reply(self.address, self.status, data=data)

    def _refusal(self) -> Reply:
        """``reject_with`` as a reply: an error code, or an alarm in place of the status."""
        if self.reject_with.startswith("A?"):
            return Reply(self.address, Status.ALARM, alarm=Alarm(self.reject_with[2:]))
        return self._reply(self.reject_with)

    def _running(self) -> bool:
        return self.status in (Status.INFUSING, Status.WITHDRAWING, Status.PURGING)

    def _cmd_status(self, _params: str) -> str:
        return ""

    def _cmd_dia(self, params: str) -> str:
        if not params:
            return format_float(self.diameter_mm)
        if self._running():
            return "?NA"
        value = _parse(params)
        if value is None or not valid_diameter(value):
            return "?OOR"
        self.diameter_mm = value
        return ""

    def _cmd_rat(self, params: str) -> str:
        if not params:
            return f"{format_float(self.rate_value)}{self.rate_unit.value}"
        unit = self.rate_unit
        if params[-2:] in {u.value for u in RateUnit}:
            params, unit = params[:-2], RateUnit(params[-2:])
        value = _parse(params)
        if value is None:
            return "?OOR"
        low, high = rate_limits(self.diameter_mm)
        if not low <= value * unit.ml_h <= high:
            return "?OOR"
        self.rate_value, self.rate_unit = value, unit
        return ""

    def _cmd_vol(self, params: str) -> str:
        unit = self.volume_unit
        if not params:
            shown = min(self.target_ml / unit.ml, _MAX_FLOAT)
            return f"{format_float(shown)}{unit.value}"
        if params in ("UL", "ML"):
            return "" if params == unit.value else "?NA"  # units follow the diameter here
        value = _parse(params)
        if value is None:
            return "?OOR"
        self.target_ml = value * unit.ml
        return ""

    def _cmd_dir(self, params: str) -> str:
        if not params:
            return self.direction
        new = {"INF": "INF", "WDR": "WDR", "REV": "WDR" if self.direction == "INF" else "INF"}
        self.direction = new[params]
        if self._running():
            self.status = Status.INFUSING if self.direction == "INF" else Status.WITHDRAWING
        return ""

    def _cmd_run(self, _params: str) -> str:
        if self.rate_value == 0:
            return "?NA"
        if self.status is Status.STOPPED:
            self.phase_ml = Decimal(0)
        if not self._running():
            self.front_panel_run()
        return ""

    def _cmd_stp(self, _params: str) -> str:
        if self._running():
            self.status = Status.PAUSED
        else:
            self.status = Status.STOPPED
        return ""

    def _cmd_dis(self, _params: str) -> str:
        unit = self.volume_unit
        infused = format_float(min(self.infused_ml / unit.ml, _MAX_FLOAT))
        withdrawn = format_float(min(self.withdrawn_ml / unit.ml, _MAX_FLOAT))
        return f"I{infused}W{withdrawn}{unit.value}"

    def _cmd_cld(self, params: str) -> str:
        if params == "INF":
            self.infused_ml = Decimal(0)
        else:
            self.withdrawn_ml = Decimal(0)
        return ""

    def _cmd_ver(self, _params: str) -> str:
        return FIRMWARE

    def _cmd_saf(self, params: str) -> str:
        if not params:
            return str(self.safe_timeout_s)
        value = int(params)
        if value > MAX_SAFE_TIMEOUT_S:
            return "?OOR"
        self.safe_timeout_s = value
        self.last_valid_packet = self.now
        return ""


def is_write(command: Command) -> bool:
    """Whether ``command`` sets something or acts (as opposed to a query of a value)."""
    spec = COMMANDS.get(command.name)
    return bool(command.params) or spec is None or spec.query is None


def _parse(text: str) -> Decimal | None:
    try:
        return parse_float(text)
    except ValueError:
        return None
