"""Serve simulated pumps over Modbus TCP or RTU with pymodbus's server side, in-process.

Usage from asyncio code (tests, the demo)::

    sim = ModbusPumpSimulator([ModbusPumpSetup(unit_id=1, status="infusing",
                                          rate_ml_h=Decimal("52.5"))], speed=1.0)
    async with sim.serving("tcp://127.0.0.1:0") as served:   # or a serial/pty path
        served.url          # "tcp://127.0.0.1:40123" (the bound port)
        sim.pump(1).delivered_rate_ml_h
        sim.inject(Fault.OCCLUSION, unit=1); sim.clear(Fault.OCCLUSION, unit=1)

The same simulator may be served again after the context exits (pump state is kept), which is
how a device restart on the same port is simulated. Each pump is one Modbus unit id; the map is
any register-map profile (generic-pump-v1 by default). Every client write is logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.bus import LinkKind, parse_url
from drivers.modbus.regmap import RegisterMap, Table, load_profile
from protocol.errors import InfusiondError
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import Fault, FaultSpec, ModbusPumpSetup, PumpModel, SimWriteError

log = structlog.get_logger("infusiond.sim.modbus")

REQUEST_LOG_SIZE = 10_000
WRITE_FUNCTIONS = frozenset({6, 16})
GARBAGE_MASK = 0xA5  # XORed into every byte of an answer by the GARBAGE fault
ANY_UNIT = 0  # pymodbus: device id 0 catches every unit id not configured


class SimulatorError(InfusiondError):
    """The simulator cannot serve (port in use, serial device missing)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request a pump answered (kept in ``ModbusPumpSimulator.requests``)."""

    unit: int
    function_code: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Served:
    """What is being served: the effective URL (bound port filled in) and the unit ids."""

    url: str
    unit_ids: tuple[int, ...]
    profile: str


class ModbusPumpSimulator:
    """Several simulated pumps (one unit id each) behind one Modbus endpoint."""

    def __init__(
        self,
        pumps: Sequence[ModbusPumpSetup] = (ModbusPumpSetup(),),
        *,
        profile: RegisterMap | str | Path = "generic-pump-v1",
        speed: float = 1.0,
        clock: SimClock | None = None,
        baudrate: int = 19200,
    ) -> None:
        self.regmap = profile if isinstance(profile, RegisterMap) else load_profile(profile)
        self.clock = clock or SimClock(speed=speed)
        self.baudrate = baudrate
        self.pumps: dict[int, PumpModel] = {}
        for cfg in pumps:
            if not 1 <= cfg.unit_id <= 247 or cfg.unit_id in self.pumps:
                raise ValueError(f"unit id {cfg.unit_id} is outside 1..247 or used twice")
            self.pumps[cfg.unit_id] = PumpModel(cfg, self.regmap)
        real = self._real_now()
        for pump in self.pumps.values():
            pump.last_feed_real = real
        self.served: Served | None = None
        #: the most recent requests answered, oldest first (bounded)
        self.requests: collections.deque[Request] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self._rtu = False
        self._line = asyncio.Lock()  # an RTU line answers one request at a time

    # -- the runtime API ---------------------------------------------------------------------

    @property
    def unit_ids(self) -> list[int]:
        """The unit ids served, in order."""
        return list(self.pumps)

    def pump(self, unit_id: int = 1) -> PumpModel:
        """The model of one pump, advanced to now (read delivered rate, state, alarms...)."""
        pump = self.pumps[unit_id]
        pump.advance(self.clock.now(), self._real_now())
        return pump

    def inject(
        self, fault: Fault | str, arg: float | None = None, *, unit: int | None = None
    ) -> None:
        """Inject a fault into one pump (``unit``) or into all of them."""
        f = Fault(fault)
        for pump in self._targets(unit):
            pump.advance(self.clock.now(), self._real_now())
            pump.inject(f, arg, real_now=self._real_now())
            log.info("fault injected", unit=pump.unit_id, fault=f.value, arg=arg)

    def clear(self, fault: Fault | str, *, unit: int | None = None) -> None:
        """Remove a fault's cause (latched alarms stay until acknowledged)."""
        f = Fault(fault)
        for pump in self._targets(unit):
            pump.clear(f)
            log.info("fault cleared", unit=pump.unit_id, fault=f.value)

    def apply(self, spec: FaultSpec) -> None:
        """Inject a parsed ``[UNIT:]NAME[=ARG]`` fault."""
        self.inject(spec.fault, spec.arg, unit=spec.unit)

    def _targets(self, unit: int | None) -> list[PumpModel]:
        if unit is None:
            return list(self.pumps.values())
        if unit not in self.pumps:
            raise ValueError(f"no simulated pump with unit id {unit}")
        return [self.pumps[unit]]

    def _real_now(self) -> float:
        return self.clock.now() / self.clock.speed

    # -- pymodbus glue -------------------------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        devices = [
            SimDevice(
                id=unit,
                simdata=self._simdata(),
                action=functools.partial(self._action, pump),
            )
            for unit, pump in self.pumps.items()
        ]
        devices.append(SimDevice(id=ANY_UNIT, simdata=self._catch_all(), action=_silent))
        return devices

    def _simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        tables: dict[Table, list[SimData]] = {}
        for table in Table:
            fields = [f for f in self.regmap.fields.values() if f.table is table]
            if not fields:
                tables[table] = [SimData(0, datatype=DataType.INVALID)]
                continue
            writable = {a for f in fields if f.writable for a in range(f.address, f.end)}
            first = min(f.address for f in fields)
            last = max(f.end for f in fields)
            # Unmapped registers inside the map read as 0 (so a poll can span them).
            tables[table] = [
                SimData(a, values=0, datatype=DataType.REGISTERS, readonly=a not in writable)
                for a in range(first, last)
            ]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return (bits, list(bits), tables[Table.HOLDING], tables[Table.INPUT])

    @staticmethod
    def _catch_all() -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        regs = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
        return (bits, list(bits), regs, list(regs))

    async def _action(  # noqa: PLR0917 - the pymodbus SimAction signature
        self,
        pump: PumpModel,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request to ``pump``; refreshes or applies registers.

        On an RTU line requests are handled one at a time, as a real device does."""
        if not self._rtu:
            return await self._handle(
                pump, function_code, start_address, address, count, registers, values
            )
        async with self._line:
            return await self._handle(
                pump, function_code, start_address, address, count, registers, values
            )

    async def _handle(  # noqa: PLR0917 - same arguments as _action
        self,
        pump: PumpModel,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if pump.comm.no_answer:
            raise NoSuchIdException(f"unit {pump.unit_id} does not answer (fault)")
        if pump.comm.delay_s:
            await asyncio.sleep(pump.comm.delay_s)
        if pump.comm.busy:
            return ExcCodes.DEVICE_BUSY
        pump.advance(self.clock.now(), self._real_now())
        self.requests.append(Request(pump.unit_id, function_code, address, count))
        if values is not None:
            words = [int(v) for v in values]
            try:
                decoded = pump.write(address, words, self._real_now())
            except SimWriteError as exc:
                log.warning(
                    "write refused",
                    unit=pump.unit_id,
                    address=address,
                    values=words,
                    error=str(exc),
                )
                return ExcCodes.ILLEGAL_VALUE
            log.info(
                "register write",
                unit=pump.unit_id,
                address=address,
                values=words,
                fields={k: str(v) for k, v in decoded.items()},
                executed_seq=pump.executed_seq,
                last_result=pump.last_result,
                status=pump.state,
                rate=str(pump.rate),
            )
            if pump.comm.write_exception:
                return ExcCodes(pump.comm.write_exception)
        table = Table.INPUT if function_code == 4 else Table.HOLDING
        image = pump.image()[table]
        for i in range(len(registers)):
            registers[i] = image.get(start_address + i, 0)
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:  # noqa: FBT001 - pymodbus API
        """Faults on outgoing answers: WRONG_UNIT rewrites the unit id, LOST_ANSWER drops
        the answer to a write (the write itself was executed), GARBAGE scrambles every byte
        (no frame: a bad protocol id over TCP, a bad CRC over RTU)."""
        if not sending or not data:
            return data
        pos = 0 if self._rtu else 6
        if len(data) <= pos + 1:
            return data
        pump = self.pumps.get(data[pos])
        if pump is None:
            return data
        if pump.comm.lost_answer and data[pos + 1] in WRITE_FUNCTIONS:
            return b""
        if pump.comm.garbage:
            return bytes(b ^ GARBAGE_MASK for b in data)
        if not pump.comm.wrong_unit:
            return data
        frame = bytearray(data)
        frame[pos] = (data[pos] % 247) + 1
        if self._rtu:
            frame[-2:] = FramerRTU.compute_CRC(bytes(frame[:-2])).to_bytes(2, "big")
        return bytes(frame)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:  # noqa: FBT001
        """Fault SHORT_ANSWER: answer reads with one register less than asked."""
        pump = self.pumps.get(pdu.dev_id)
        if sending and pump is not None and pump.comm.short_answer and len(pdu.registers) > 1:
            pdu.registers = pdu.registers[:-1]
        return pdu

    # -- serving -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, url: str) -> AsyncIterator[Served]:
        """Serve on ``tcp://host:port`` (port 0 = any), ``socket://host:port`` (RTU framing
        over TCP) or a serial device path (RTU). Yields what is served."""
        address = parse_url(url)
        self._rtu = address.kind is not LinkKind.TCP
        server: ModbusTcpServer | ModbusSerialServer
        common = {
            "ignore_missing_devices": True,
            "trace_packet": self._trace_packet,
            "trace_pdu": self._trace_pdu,
        }
        if address.kind is LinkKind.RTU_SERIAL:
            server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=address.path,
                baudrate=self.baudrate,
                **common,  # type: ignore[arg-type]
            )
        else:
            server = ModbusTcpServer(
                self._devices(),
                framer=FramerType.SOCKET if address.kind is LinkKind.TCP else FramerType.RTU,
                address=(address.host, address.port),
                **common,  # type: ignore[arg-type]
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen"
            raise SimulatorError(f"cannot serve Modbus on {url}: {exc}") from None
        try:
            effective = url
            if address.kind is not LinkKind.RTU_SERIAL:
                sockets = getattr(server.transport, "sockets", None) or []
                port = sockets[0].getsockname()[1] if sockets else address.port
                effective = f"{address.kind.value}://{address.host}:{port}"
            self.served = Served(effective, tuple(self.pumps), self.regmap.name)
            log.info(
                "modbus simulator serving",
                url=effective,
                unit_ids=list(self.pumps),
                profile=self.regmap.name,
                speed=self.clock.speed,
            )
            yield self.served
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]
            self.served = None
            log.info("modbus simulator stopped", url=url)


async def _silent(
    _function_code: int,
    _start_address: int,
    _address: int,
    _count: int,
    _registers: list[int],
    _values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """Unit ids with no pump behind them stay silent, like an empty RTU address."""
    raise NoSuchIdException("no pump with this unit id")
