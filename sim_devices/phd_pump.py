"""Device model of one Harvard Apparatus PHD ULTRA on a pump chain (no I/O; time is an argument).

It answers from the same grammar as the driver (``drivers/phd/grammar.toml``): a command is its
full name or its first four letters; arguments of the wrong shape answer ``Argument error``,
an unknown command ``Command error``, a value outside the syringe's range ``Out of range``, a
command not allowed now (``diameter`` while running) ``Command not allowed``. Every reply ends
in the prompt that carries the state (``:`` idle, ``>`` infusing, ``<`` withdrawing, ``*``
stalled, ``T*`` target reached).

* ``irun`` infuses (``run`` runs in the current direction); ``stop`` stops; rates may change
  while running; ``tvolume`` stops the pump with ``T*`` once that much has been infused.
* A stall stops the pump: the prompt is ``*`` and the ``status`` line has the ``S`` flag until
  the next ``irun``/``run``/``stop``.
* A power reset stops the pump and zeroes the infused volume and time; settings are kept.
* The ``status`` line reports, for the current direction, the motor rate in fL/s (truncated;
  0 while the motor stands), the infusing time in s and the infused volume in fL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from drivers.phd.grammar import (
    COMMANDS,
    ERRORS,
    RATE_UNITS,
    VOLUME_UNITS,
    Command,
    Prompt,
    RawStatus,
    Reply,
)
from drivers.phd.syringe import rate_limits, valid_diameter
from sim_devices.serial_pump import FaultArming

FIRMWARE = "PHD ULTRA 3.0.4"


class Fault(enum.Enum):
    """Faults of the reply path, consumed one per reply (``count``) or until cleared."""

    SILENCE = "silence"  # deaf: the command is not executed and nothing is answered
    DROP_REPLY = "drop-reply"  # the command is executed, its reply is lost
    GARBLE = "garble"  # one reply byte corrupted
    TRUNCATE = "truncate"  # the prompt never comes (reply cut short)
    WRONG_ADDRESS = "wrong-address"  # the prompt carries another pump's address
    OVERLONG = "overlong"  # an endless line instead of the reply
    SLOW = "slow"  # the reply is sent after ``reply_delay_s`` (real seconds)
    REJECT = "reject"  # answered with ``reject_with`` (an error line), not executed
    REFUSE_BUT_APPLY = "refuse-but-apply"  # executed, yet answered with ``reject_with``
    HANG_UP = "hang-up"  # executed, then the line drops without a reply
    NOISE = "noise"  # a corrupted copy of the reply comes first


@dataclass(frozen=True)
class PhdPumpSetup:
    """Initial state of a simulated pump (API and CLI)."""

    address: int = 0
    diameter_mm: Decimal = Decimal("26.59")  # BD 60 mL
    rate_ml_h: Decimal = Decimal(0)
    running: bool = False
    target_ml: Decimal = Decimal(0)  # 0 = no target


@dataclass
class PhdPumpModel(FaultArming[Fault, Command]):
    """State of one pump. Call :meth:`advance` with the simulated time before reading state."""

    setup: PhdPumpSetup
    now: float = 0.0
    prompt: Prompt = Prompt.IDLE
    diameter_mm: Decimal = Decimal(0)
    rate_value: Decimal = Decimal(0)
    rate_unit: str = "ml/hr"
    target_ml: Decimal = Decimal(0)
    infused_ml: Decimal = Decimal(0)
    infuse_time_s: float = 0.0
    stalled: bool = False
    faults: dict[Fault, int | None] = field(default_factory=dict)
    fault_on: dict[Fault, str] = field(default_factory=dict)
    reply_delay_s: float = 0.0
    reject_with: str = "Out of range"
    commands_seen: int = 0
    writes: list[str] = field(default_factory=list)  # every write received, as sent

    def __post_init__(self) -> None:
        s = self.setup
        if not valid_diameter(s.diameter_mm):
            raise ValueError(f"diameter {s.diameter_mm} mm outside 0.1..45.0")
        if not 0 <= s.address <= 99:
            raise ValueError(f"address {s.address} outside 0..99")
        self.diameter_mm = s.diameter_mm
        self.rate_value = s.rate_ml_h
        self.target_ml = s.target_ml
        self.prompt = Prompt.INFUSING if s.running else Prompt.IDLE

    @property
    def address(self) -> int:
        return self.setup.address

    @property
    def rate_ml_h(self) -> Decimal:
        """The programmed infuse rate in mL/h."""
        return self.rate_value * RATE_UNITS[self.rate_unit]

    @property
    def delivering_ml_h(self) -> Decimal:
        return self.rate_ml_h if self.prompt is Prompt.INFUSING else Decimal(0)

    # -- time ---------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Integrate delivery up to ``now`` (simulated s); stop with ``T*`` at the target."""
        dt = max(0.0, now - self.now)
        self.now = max(self.now, now)
        if self.prompt is Prompt.INFUSING and dt > 0:
            dv = self.rate_ml_h * Decimal(repr(dt)) / 3600
            if self.target_ml and self.infused_ml + dv >= self.target_ml:
                dv = max(Decimal(0), self.target_ml - self.infused_ml)
                self.prompt = Prompt.TARGET_REACHED
            self.infused_ml += dv
            self.infuse_time_s += dt

    # -- front panel and physical events ------------------------------------------------------

    def stall(self) -> None:
        """The motor stalls (occlusion, end of travel): pumping stops, prompt ``*``."""
        self.stalled = True
        self.prompt = Prompt.STALLED

    def power_reset(self) -> None:
        """Power interruption: pumping stops; volume and time counters restart at zero."""
        self.prompt = Prompt.IDLE
        self.stalled = False
        self.infused_ml = Decimal(0)
        self.infuse_time_s = 0.0

    def front_panel_rate(self, rate_ml_h: Decimal) -> None:
        """Someone changed the infuse rate at the touch screen."""
        self.rate_value, self.rate_unit = rate_ml_h, "ml/hr"

    def front_panel_run(self) -> None:
        self.stalled = False
        self.prompt = Prompt.INFUSING

    def front_panel_stop(self) -> None:
        self.stalled = False
        self.prompt = Prompt.IDLE

    # -- reply faults (FaultArming) -----------------------------------------------------------

    command_names = COMMANDS

    def command_key(self, name: str) -> str:
        return name

    def is_write(self, command: Command) -> bool:
        return is_write(command)

    # -- commands -----------------------------------------------------------------------------

    def handle(self, command: Command, now: float) -> Reply:
        """Execute one command received at ``now`` and answer it."""
        self.advance(now)
        self.commands_seen += 1
        if is_write(command):
            self.writes.append(command.text())
        if self.take_fault(Fault.REJECT, command):
            return self._reply(self.reject_with)
        refuse = self.take_fault(Fault.REFUSE_BUT_APPLY, command)
        spec = COMMANDS[command.name]
        if not spec.accepts(command.args):
            return self._reply("Argument error")
        handler = getattr(self, f"_cmd_{command.name}")
        data: str = handler(command.args)
        return self._reply(self.reject_with if refuse else data)

    def unknown(self) -> Reply:
        """The answer to a line that is not a command."""
        return self._reply("Command error")

    def _reply(self, data: str) -> Reply:
        return Reply(self.address, self.prompt, (data,) if data else ())

    def _running(self) -> bool:
        return self.prompt in (Prompt.INFUSING, Prompt.WITHDRAWING)

    def _cmd_address(self, args: str) -> str:
        return str(self.address) if not args else "Command not allowed"

    def _cmd_ver(self, _args: str) -> str:
        return FIRMWARE

    def _cmd_diameter(self, args: str) -> str:
        if not args:
            return f"{self.diameter_mm:.4f} mm"
        if self._running():
            return "Command not allowed"
        value = Decimal(args)
        if not valid_diameter(value):
            return "Out of range"
        self.diameter_mm = value
        return ""

    def _cmd_irate(self, args: str) -> str:
        if not args:
            return f"{_plain(self.rate_value)} {self.rate_unit}"
        number, unit = args.split(" ")
        value = Decimal(number)
        low, high = rate_limits(self.diameter_mm)
        if not low <= value * RATE_UNITS[unit] <= high:
            return "Out of range"
        self.rate_value, self.rate_unit = value, unit
        return ""

    def _cmd_crate(self, _args: str) -> str:
        return f"{_plain(self.delivering_ml_h)} ml/hr"

    def _cmd_tvolume(self, args: str) -> str:
        if not args:
            if not self.target_ml:
                return "Target volume not set"
            return f"{_plain(self.target_ml)} ml"
        number, unit = args.split(" ")
        self.target_ml = Decimal(number) * VOLUME_UNITS[unit]
        return ""

    def _cmd_ivolume(self, _args: str) -> str:
        return f"{_plain(self.infused_ml.quantize(Decimal('0.000001')))} ml"

    def _cmd_irun(self, _args: str) -> str:
        if self.rate_ml_h <= 0:
            return "Out of range"
        self.stalled = False
        self.prompt = Prompt.INFUSING
        return ""

    def _cmd_run(self, args: str) -> str:
        return self._cmd_irun(args)

    def _cmd_stop(self, _args: str) -> str:
        self.stalled = False
        self.prompt = Prompt.IDLE
        return ""

    def _cmd_status(self, _args: str) -> str:
        motor_ml_h = self.rate_ml_h if self._running() else Decimal(0)
        fl_s = (motor_ml_h * Decimal(10) ** 12 / 3600).to_integral_value(ROUND_FLOOR)
        volume_fl = (self.infused_ml * Decimal(10) ** 12).to_integral_value(ROUND_FLOOR)
        return RawStatus(
            rate_fl_s=int(fl_s),
            time_s=int(self.infuse_time_s),
            volume_fl=int(volume_fl),
            infusing_direction=self.prompt is not Prompt.WITHDRAWING,
            limit=".",
            stalled=self.stalled,
            trigger_high=False,
            port_infuse=True,
        ).text()


def is_write(command: Command) -> bool:
    """A command that changes the pump: with arguments, or an action (no query form)."""
    spec = COMMANDS[command.name]
    return bool(command.args) or spec.query is None


def refusal_text(text: str) -> str:
    """``text`` if it is one of the grammar's error lines, else ValueError listing them."""
    if text not in ERRORS:
        raise ValueError(f"{text!r} is not an error reply; use one of {sorted(ERRORS)}")
    return text


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros (``9``, ``0.05``)."""
    try:
        text = f"{value.normalize():f}"
    except InvalidOperation:  # pragma: no cover - finite values only
        text = str(value)
    return text
