"""The simulated Modbus infusion pump: delivery physics, state rules, faults, register image.

Pure device model (no sockets): the server (modbus_server.py) asks it for the register image
and hands it the registers a client writes. Registers are encoded and decoded with the driver's
own map codec (drivers.modbus.regmap), so the simulator and the driver cannot drift.

Behaviour (times are simulated seconds from the SimClock, except the comm watchdog, which is a
communication timeout and runs on real seconds):

* volume_infused integrates the rate while infusing; a non-zero VTBI counts down, raises
  near-end when less than ``near_end_s`` of delivery remains, and stops the pump at 0
  (VTBI 0 means "no volume limit");
* heartbeat = simulated seconds since boot (wraps at 65536); battery drains;
* a command executes when command_seq is written: executed_seq echoes it, last_result is
  0 ok, 1 out of device range (setpoint > max_rate), 2 not allowed in this state (start while
  an alarm is active, pause while stopped, clear volume while infusing, start at rate 0);
* comm_timeout_s > 0: no write to rate_setpoint/command/command_seq within that many real
  seconds while infusing -> the pump stops in alarm with comm-timeout.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from drivers.errors import DriverError
from drivers.modbus.regmap import RegisterMap, Table, Value

CENT = Decimal("0.01")
LOW_BATTERY_PCT = 20
STOPPING_ALARMS = frozenset(
    {"occlusion", "air_in_line", "empty", "door_open", "hardware_fault", "comm_timeout"}
)
WATCHDOG_FIELDS = ("rate_setpoint", "command", "command_seq")
GATEWAY_NO_RESPONSE = 11  # Modbus exception: the device behind a gateway did not answer
EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 10, 11})  # defined by the Modbus spec


class Fault(enum.Enum):
    """Faults a test, a scenario or the CLI can inject (``--faults NAME[=ARG]``)."""

    OCCLUSION = "occlusion"
    AIR_IN_LINE = "air_in_line"
    EMPTY = "empty"
    DOOR_OPEN = "door_open"
    HARDWARE_FAULT = "hardware_fault"
    LOW_BATTERY = "low_battery"  # battery drops to 15 %
    COMM_TIMEOUT = "comm_timeout"  # the pump's comm watchdog fires now
    NO_ANSWER = "no_answer"  # stops answering (silent)
    SLOW_ANSWER = "slow_answer"  # answers after ARG real seconds (default 2)
    FRONT_PANEL_RATE = "front_panel_rate"  # a nurse sets the rate to ARG mL/h at the pump
    POWER_RESET = "power_reset"  # reboot: stopped, alarms cleared, heartbeat from 0
    FROZEN = "frozen"  # firmware hung: registers (heartbeat included) stop changing
    WRONG_UNIT = "wrong_unit"  # answers carry another unit id
    SHORT_ANSWER = "short_answer"  # read answers carry one register less than asked
    BUSY = "busy"  # answers every request with exception 6 (device busy)
    LOST_ANSWER = "lost_answer"  # writes execute but their answers are lost on the wire
    GARBAGE = "garbage"  # every answer is replaced by bytes that form no frame
    MISEXECUTE = "misexecute"  # apply_rate reports ok but runs ARG mL/h (default a tenth)
    REFUSE_BUT_APPLY = "refuse_but_apply"  # commands execute, yet last_result says not allowed
    WRITE_EXCEPTION = "write_exception"  # writes execute, then exception ARG (default 11) answers


ALARM_FAULTS = {
    Fault.OCCLUSION: "occlusion",
    Fault.AIR_IN_LINE: "air_in_line",
    Fault.EMPTY: "empty",
    Fault.DOOR_OPEN: "door_open",
    Fault.HARDWARE_FAULT: "hardware_fault",
}


class SimWriteError(ValueError):
    """A client wrote a value the device refuses (answered with exception 3)."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A parsed fault: ``[UNIT:]NAME[=ARG]`` (unit None = every pump)."""

    fault: Fault
    arg: float | None = None
    unit: int | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Parse ``occlusion``, ``2:no_answer``, ``slow_answer=1.5``, ``front_panel_rate=60``."""
        unit: int | None = None
        spec = text.strip()
        if ":" in spec:
            head, spec = spec.split(":", 1)
            if not head.isdigit():
                raise ValueError(f"fault {text!r}: unit id before ':' must be a number")
            unit = int(head)
        name, _, arg = spec.partition("=")
        try:
            fault = Fault(name.strip().replace("-", "_"))
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {name!r}; known: {known}") from None
        try:
            value = float(arg) if arg else None
        except ValueError:
            raise ValueError(f"fault {text!r}: argument {arg!r} is not a number") from None
        if fault is Fault.FRONT_PANEL_RATE and value is None:
            raise ValueError(f"fault {text!r}: front_panel_rate needs =RATE (mL/h)")
        return cls(fault, value, unit)


@dataclass
class ModbusPumpSetup:
    """Initial state of one simulated pump (all of it settable from the API and the CLI)."""

    unit_id: int = 1
    status: str = "stopped"  # stopped | infusing | paused
    rate_ml_h: Decimal = Decimal(0)
    vtbi_ml: Decimal = Decimal(0)  # 0 = no volume limit
    volume_ml: Decimal = Decimal(0)
    battery_pct: float = 100.0
    max_rate_ml_h: Decimal = Decimal("999.99")
    model: str = "SIM-GP1"
    serial: str = ""
    firmware: int = 103
    comm_timeout_s: int = 0
    near_end_s: float = 300.0  # near-end when less than this much delivery remains
    drain_pct_per_h: float = 5.0  # battery drain while infusing (a fifth of it when idle)


@dataclass
class CommFaults:
    """How the pump currently (mis)behaves on the wire; read by the server."""

    no_answer: bool = False
    delay_s: float = 0.0
    wrong_unit: bool = False
    short_answer: bool = False
    busy: bool = False
    lost_answer: bool = False
    garbage: bool = False
    write_exception: int = 0  # 0: none; else the exception code that answers executed writes


@dataclass
class Misbehaviour:
    """How the pump's firmware misbehaves when it executes commands."""

    misexecute: bool = False
    misexecute_rate: Decimal | None = None  # None: a tenth of the setpoint
    refuse_but_apply: bool = False


@dataclass
class PumpModel:
    """One simulated pump. ``advance`` before reading; ``write`` applies client writes."""

    config: ModbusPumpSetup
    regmap: RegisterMap
    now: float = 0.0  # simulated seconds
    state: str = "stopped"
    rate: Decimal = Decimal(0)
    vtbi: Decimal = Decimal(0)
    volume: Decimal = Decimal(0)
    battery: float = 100.0
    alarms: set[str] = field(default_factory=set)  # latched alarm bits
    causes: set[str] = field(default_factory=set)  # physical causes still present
    setpoint: Decimal = Decimal(0)
    command: int = 0
    command_seq: int = 0
    executed_seq: int = 0
    last_result: int = 0
    comm_timeout_s: int = 0
    boot_at: float = 0.0
    last_feed_real: float = 0.0
    comm: CommFaults = field(default_factory=CommFaults)
    firmware: Misbehaviour = field(default_factory=Misbehaviour)
    frozen_image: dict[Table, dict[int, int]] | None = None
    overrides: dict[int, int] = field(default_factory=dict)  # raw holding/input overrides
    writes: int = 0

    def __post_init__(self) -> None:
        c = self.config
        if c.status not in ("stopped", "infusing", "paused"):
            raise ValueError(f"initial status must be stopped, infusing or paused: {c.status!r}")
        self.state = c.status
        self.rate, self.setpoint = Decimal(c.rate_ml_h), Decimal(c.rate_ml_h)
        self.vtbi, self.volume = Decimal(c.vtbi_ml), Decimal(c.volume_ml)
        self.battery = c.battery_pct
        self.comm_timeout_s = c.comm_timeout_s
        if self.rate > c.max_rate_ml_h:
            raise ValueError(f"initial rate {self.rate} above max rate {c.max_rate_ml_h}")
        missing = {"ok", "out_of_range", "not_allowed"} - set(self.regmap.results.values())
        if missing:
            raise ValueError(f"profile {self.regmap.name}: [results] lacks {sorted(missing)}")
        self.regmap.encode(self._values())  # fail early on an out-of-map initial state

    @property
    def unit_id(self) -> int:
        return self.config.unit_id

    @property
    def delivered_rate_ml_h(self) -> Decimal:
        """What actually flows into the patient now (0 unless infusing)."""
        return self.rate if self.state == "infusing" else Decimal(0)

    # -- time --------------------------------------------------------------------------------

    def advance(self, now: float, real_now: float) -> None:
        """Integrate delivery up to simulated time ``now``; check the comm watchdog."""
        dt = max(0.0, now - self.now)
        self.now = now
        if self.state == "infusing" and dt:
            delivered = self.rate * Decimal(dt) / 3600
            limited = self.vtbi > 0
            if limited:
                delivered = min(delivered, self.vtbi)
                self.vtbi -= delivered
            self.volume += delivered
            if limited and self.vtbi <= self.rate * Decimal(self.config.near_end_s) / 3600:
                self.alarms.add("near_end")
            if limited and self.vtbi <= 0:
                self.vtbi = Decimal(0)
                self.state = "stopped"  # VTBI done: near-end stays latched until acknowledged
        drain = self.config.drain_pct_per_h * dt / 3600
        self.battery = max(0.0, self.battery - (drain if self.state == "infusing" else drain / 5))
        if self.battery < LOW_BATTERY_PCT:
            self.alarms.add("low_battery")
        if (
            self.comm_timeout_s
            and self.state == "infusing"
            and real_now - self.last_feed_real > self.comm_timeout_s
        ):
            self._raise_alarm("comm_timeout")

    def _raise_alarm(self, name: str) -> None:
        self.alarms.add(name)
        if name in STOPPING_ALARMS:
            self.state = "alarm"

    # -- faults ------------------------------------------------------------------------------

    def inject(self, fault: Fault, arg: float | None = None, *, real_now: float = 0.0) -> None:
        """Inject a fault now (one-shot faults act once and are not kept)."""
        if fault in ALARM_FAULTS:
            self.causes.add(ALARM_FAULTS[fault])
            self._raise_alarm(ALARM_FAULTS[fault])
        elif fault is Fault.LOW_BATTERY:
            self.battery = min(self.battery, arg if arg is not None else 15.0)
            self.alarms.add("low_battery")
        elif fault is Fault.COMM_TIMEOUT:
            self._raise_alarm("comm_timeout")
        elif fault is Fault.FRONT_PANEL_RATE:
            rate = Decimal(str(arg)).quantize(CENT)
            if not 0 <= rate <= self.config.max_rate_ml_h:
                raise ValueError(f"front-panel rate {rate} outside 0..{self.config.max_rate_ml_h}")
            self.rate = rate
        elif fault is Fault.POWER_RESET:
            self._power_reset(real_now)
        elif fault is Fault.NO_ANSWER:
            self.comm.no_answer = True
        elif fault is Fault.SLOW_ANSWER:
            self.comm.delay_s = arg if arg is not None else 2.0
        elif fault is Fault.FROZEN:
            self.frozen_image = self.image()
        elif fault is Fault.WRONG_UNIT:
            self.comm.wrong_unit = True
        elif fault is Fault.SHORT_ANSWER:
            self.comm.short_answer = True
        elif fault is Fault.BUSY:
            self.comm.busy = True
        elif fault is Fault.LOST_ANSWER:
            self.comm.lost_answer = True
        elif fault is Fault.GARBAGE:
            self.comm.garbage = True
        elif fault is Fault.MISEXECUTE:
            self.firmware.misexecute = True
            self.firmware.misexecute_rate = (
                None if arg is None else Decimal(str(arg)).quantize(CENT, ROUND_DOWN)
            )
        elif fault is Fault.REFUSE_BUT_APPLY:
            self.firmware.refuse_but_apply = True
        elif fault is Fault.WRITE_EXCEPTION:
            code = int(arg) if arg is not None else GATEWAY_NO_RESPONSE
            if code not in EXCEPTION_CODES:
                raise ValueError(
                    f"write_exception: {code} is not a Modbus exception code "
                    f"{sorted(EXCEPTION_CODES)}"
                )
            self.comm.write_exception = code

    def clear(self, fault: Fault) -> None:
        """Remove a fault's cause. Latched alarms stay until acknowledged (command 5)."""
        if fault in ALARM_FAULTS:
            self.causes.discard(ALARM_FAULTS[fault])
        elif fault is Fault.LOW_BATTERY:
            self.battery = 100.0
            self.alarms.discard("low_battery")
        elif fault is Fault.NO_ANSWER:
            self.comm.no_answer = False
        elif fault is Fault.SLOW_ANSWER:
            self.comm.delay_s = 0.0
        elif fault is Fault.FROZEN:
            self.frozen_image = None
        elif fault is Fault.WRONG_UNIT:
            self.comm.wrong_unit = False
        elif fault is Fault.SHORT_ANSWER:
            self.comm.short_answer = False
        elif fault is Fault.BUSY:
            self.comm.busy = False
        elif fault is Fault.LOST_ANSWER:
            self.comm.lost_answer = False
        elif fault is Fault.GARBAGE:
            self.comm.garbage = False
        elif fault is Fault.MISEXECUTE:
            self.firmware.misexecute = False
        elif fault is Fault.REFUSE_BUT_APPLY:
            self.firmware.refuse_but_apply = False
        elif fault is Fault.WRITE_EXCEPTION:
            self.comm.write_exception = 0

    def _power_reset(self, real_now: float) -> None:
        self.state = "stopped"
        self.alarms = {a for a in self.alarms if a in self.causes}
        self.boot_at = self.now
        self.command = self.command_seq = self.executed_seq = self.last_result = 0
        self.comm_timeout_s = 0
        self.last_feed_real = real_now
        self.frozen_image = None

    # -- commands ----------------------------------------------------------------------------

    def execute(self, code: int) -> str:
        """Run a command; returns the result name (ok, out_of_range, not_allowed)."""
        names = {v: k for k, v in self.regmap.commands.items()}
        name = names.get(code, "none" if code == 0 else "unknown")
        blocked = bool(self.alarms & STOPPING_ALARMS)
        if name == "none":
            return "ok"
        if name == "start":
            if blocked or self.rate <= 0:
                return "not_allowed"
            self.state = "infusing"
        elif name == "stop":
            if self.state != "alarm":
                self.state = "stopped"
        elif name == "pause":
            if self.state not in ("infusing", "paused"):
                return "not_allowed"
            self.state = "paused"
        elif name == "clear_volume":
            if self.state == "infusing":
                return "not_allowed"
            self.volume = Decimal(0)
        elif name == "acknowledge_alarms":
            self.alarms = {a for a in self.alarms if a in self.causes}
            if self.battery < LOW_BATTERY_PCT:
                self.alarms.add("low_battery")
            if self.state == "alarm" and not self.alarms & STOPPING_ALARMS:
                self.state = "stopped"
        elif name == "apply_rate":
            if self.setpoint > self.config.max_rate_ml_h:
                return "out_of_range"
            if self.state == "infusing" and self.setpoint <= 0:
                return "not_allowed"
            self.rate = self.setpoint
            if self.firmware.misexecute:
                wrong = self.firmware.misexecute_rate
                self.rate = (
                    (self.setpoint / 10).quantize(CENT, ROUND_DOWN) if wrong is None else wrong
                )
        else:
            return "not_allowed"
        return "ok"

    # -- registers ---------------------------------------------------------------------------

    def _values(self) -> dict[str, Value]:
        m, c = self.regmap, self.config
        values: dict[str, Value] = {
            "map_version": m.version,
            "status": m.status_value(self.state),
            "alarms": frozenset(self.alarms & set(m["alarms"].bits.values())),
            "rate": self.rate,
            "vtbi": self.vtbi.quantize(CENT, ROUND_DOWN),
            "volume_infused": self.volume.quantize(CENT, ROUND_DOWN),
            "battery": round(self.battery),
            "heartbeat": int(self.now - self.boot_at) & 0xFFFF,
            "comm_timeout_s": self.comm_timeout_s,
            "rate_setpoint": self.setpoint,
            "command": self.command,
            "command_seq": self.command_seq,
            "executed_seq": self.executed_seq,
            "last_result": self.last_result,
            "model": c.model,
            "serial": c.serial or f"SN{c.unit_id:04d}",
            "firmware": c.firmware,
            "max_rate": c.max_rate_ml_h,
        }
        return {k: _unscaled(m, k, v) for k, v in values.items() if k in m}

    def image(self) -> dict[Table, dict[int, int]]:
        """Every mapped register, per table, as the device would answer now."""
        if self.frozen_image is not None:
            return self.frozen_image
        out: dict[Table, dict[int, int]] = {t: {} for t in Table}
        for name, value in self._values().items():
            f = self.regmap[name]
            for i, word in enumerate(f.encode(value, self.regmap.word_order)):
                out[f.table][f.address + i] = word
        for address, word in self.overrides.items():
            for table in Table:
                if address in out[table]:
                    out[table][address] = word
        return out

    def write(self, address: int, words: Sequence[int], real_now: float) -> dict[str, Value]:
        """Apply a client write of holding registers; returns the decoded fields written.

        Raises SimWriteError (-> exception 3) for a value outside a field's range or a
        partial write of a multi-register field."""
        m = self.regmap
        end = address + len(words)
        touched = [
            f
            for f in m.fields.values()
            if f.table is Table.HOLDING and f.writable and f.address < end and address < f.end
        ]
        current = self.image()[Table.HOLDING]
        merged = {**current, **{address + i: w for i, w in enumerate(words)}}
        decoded: dict[str, Value] = {}
        for f in touched:
            try:
                decoded[f.name] = f.decode(
                    [merged.get(a, 0) for a in range(f.address, f.end)], m.word_order
                )
            except DriverError as exc:
                raise SimWriteError(str(exc)) from None
        if "command" in decoded and decoded["command"] not in (0, *m.commands.values()):
            raise SimWriteError(f"command {decoded['command']} is not a defined command")
        self.writes += 1
        self._apply(decoded)
        if any(n in decoded for n in WATCHDOG_FIELDS):
            self.last_feed_real = real_now
        if "command_seq" in decoded:
            outcome = self.execute(self.command)
            if self.firmware.refuse_but_apply and outcome == "ok":
                outcome = "not_allowed"
            codes = {name: raw for raw, name in self.regmap.results.items()}
            self.last_result = codes[outcome]
            self.executed_seq = self.command_seq
        return decoded

    def _apply(self, decoded: Mapping[str, Value]) -> None:
        for name, value in decoded.items():
            if name == "rate_setpoint":
                if isinstance(value, int | Decimal):
                    self.setpoint = Decimal(value)
            elif name == "comm_timeout_s" and isinstance(value, int):
                self.comm_timeout_s = value
            elif name == "command" and isinstance(value, int):
                self.command = value
            elif name == "command_seq" and isinstance(value, int):
                self.command_seq = value


def _unscaled(m: RegisterMap, name: str, value: Value) -> Value:
    """Unscaled fields take ints; scaled ones Decimals quantised to their resolution."""
    f = m[name]
    if isinstance(value, Decimal):
        if not f.scaled:
            return int(value)
        return value.quantize(f.scale, ROUND_DOWN)
    return value
