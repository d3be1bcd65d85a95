"""One physical Modbus link (a TCP connection or an RTU line) shared by every pump on it.

pymodbus clients are not task-safe and an RTU bus carries one transaction at a time, so every
pump on one URL shares ONE client and ONE :class:`asyncio.Lock` (``bus.lock``); callers hold the
lock for a whole transaction (write + confirmation read). :class:`BusRegistry` hands out the
shared :class:`ModbusBus` per URL and closes it when its last user releases it.

Reconnects are driven by use: when the link is down, an operation first waits for the next
attempt allowed by a capped exponential backoff with jitter, so a dead device costs nothing
between attempts and never blocks other pumps for longer than one connect timeout.

A request that gets no valid answer is told apart: silence (DeviceTimeout), a well-formed
answer from another unit id (FrameError naming it), or bytes that form no complete frame in
time: garbage or a trickle (FrameError). After garbage, a trickle or an abandoned request a TCP
stream is out of step, so the connection is dropped and the next use reconnects; an RTU line is
left quiet for one timeout instead. ``frames_sent`` counts frames handed to the transport, so a
caller knows whether a write may have reached the device.

URLs: ``tcp://host:port`` (Modbus TCP), ``socket://host:port`` (RTU framing over a TCP socket,
the pyserial URL form), or a serial device path (``/dev/ttyUSB0``, a pty) for Modbus RTU.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU

from drivers.backoff import Backoff
from drivers.base import ConnectionState
from drivers.errors import DeviceRejected, DeviceTimeout, DriverError, FrameError
from drivers.modbus.regmap import Span, Table

log = structlog.get_logger("infusiond.drivers.modbus")

#: exception codes that mean the request was refused without being acted on
NOT_PERFORMED = frozenset(
    {
        ExcCodes.ILLEGAL_FUNCTION,
        ExcCodes.ILLEGAL_ADDRESS,
        ExcCodes.ILLEGAL_VALUE,
        ExcCodes.DEVICE_BUSY,
        ExcCodes.NEGATIVE_ACKNOWLEDGE,
        ExcCodes.GATEWAY_PATH_UNAVIABLE,
    }
)
MBAP_HEADER = 6  # transaction id, protocol id, length: the length counts the bytes after it
MBAP_MIN_FRAME = 9  # header, unit id, function code, one byte of data
RTU_MIN_FRAME = 5  # unit id, function code, one byte of data, CRC


class LinkKind(enum.Enum):
    """How Modbus frames travel."""

    TCP = "tcp"  # Modbus TCP (MBAP header)
    RTU_SOCKET = "socket"  # RTU frames over a TCP socket (pyserial socket:// URL)
    RTU_SERIAL = "serial"  # RTU frames on a serial line (device path)


@dataclass(frozen=True, slots=True)
class BusAddress:
    """A parsed transport URL."""

    url: str
    kind: LinkKind
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def rtu(self) -> bool:
        return self.kind is not LinkKind.TCP


def parse_url(url: str) -> BusAddress:
    """Parse ``tcp://h:p``, ``socket://h:p`` or a serial device path (DriverError if bad)."""
    if "://" not in url:
        if not url.startswith("/"):
            raise DriverError(
                f"transport URL {url!r}: expected tcp://host:port, socket://host:port "
                "or an absolute serial device path"
            )
        return BusAddress(url, LinkKind.RTU_SERIAL, path=url)
    parts = urlsplit(url)
    kinds = {"tcp": LinkKind.TCP, "socket": LinkKind.RTU_SOCKET}
    if parts.scheme not in kinds:
        raise DriverError(f"transport URL {url!r}: unknown scheme {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError:
        raise DriverError(f"transport URL {url!r}: invalid port") from None
    if not parts.hostname or port is None:
        raise DriverError(f"transport URL {url!r}: needs host and port")
    return BusAddress(url, kinds[parts.scheme], host=parts.hostname, port=port)


class ModbusBus:
    """One shared client + lock + link state. Methods other than ``close`` need ``lock``."""

    def __init__(
        self,
        address: BusAddress,
        *,
        timeout_s: float = 1.0,
        baudrate: int = 19200,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.baudrate = baudrate
        self.lock = asyncio.Lock()
        self.state = ConnectionState.CONNECTING
        self.reason = "not connected yet"
        self.users = 0
        self._backoff = backoff or Backoff(initial_s=0.2, maximum_s=10.0)
        self._clock = clock
        self._next_attempt = 0.0
        self._expect_unit = 0
        self._foreign_unit: int | None = None
        self._received = 0  # bytes of the answer seen so far (framed or not)
        self._quiet_until = 0.0
        #: frames handed to the transport so far: a caller compares it before and after a
        #: request to know whether that request may have reached the device
        self.frames_sent = 0
        self._client = self._make_client()

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # retries=0: a request is sent exactly once (never a blind resend of a write);
        # reconnect_delay=0: pymodbus does not reconnect on its own, we do (with backoff).
        a = self.address
        common: dict[str, object] = {
            "timeout": self.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace_packet,
        }
        if a.kind is LinkKind.TCP:
            return AsyncModbusTcpClient(a.host, port=a.port, **common)  # type: ignore[arg-type]
        port = a.path or f"socket://{a.host}:{a.port}"
        return AsyncModbusSerialClient(
            port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            **common,  # type: ignore[arg-type]
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:  # noqa: FBT001 - pymodbus API
        """Count frames sent; notice answers that are well-formed frames from another unit id
        (pymodbus silently skips them) and bytes that form no frame at all."""
        if sending:
            self.frames_sent += 1
            return data
        self._received = max(self._received, len(data))
        unit = self._frame_unit(data)
        if unit is not None and unit != self._expect_unit:
            self._foreign_unit = unit
        return data

    def _start_request(self, unit: int) -> None:
        """Forget what the previous answer looked like."""
        self._expect_unit, self._foreign_unit, self._received = unit, None, 0

    def _frame_unit(self, data: bytes) -> int | None:
        """The unit id of a complete, well-formed frame at the start of ``data``, else None."""
        if self.address.rtu:
            crc = int.from_bytes(data[-2:], "big")
            if len(data) >= RTU_MIN_FRAME and FramerRTU.check_CRC(data[:-2], crc):
                return data[0]
            return None
        if len(data) < MBAP_MIN_FRAME or data[2:4] != b"\0\0":
            return None
        if len(data) < MBAP_HEADER + int.from_bytes(data[4:6], "big"):
            return None
        return data[6]

    @property
    def connected(self) -> bool:
        return self._client.connected

    def _set_state(self, state: ConnectionState, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            log.info("modbus link", url=self.address.url, state=state.value, reason=reason)
        self.state, self.reason = state, reason

    async def ensure_connected(self) -> None:
        """Connect if needed, respecting the backoff; DriverError while offline."""
        if self._client.connected:
            return
        now = self._clock()
        if now < self._next_attempt:
            raise DriverError(
                f"{self.address.url}: offline ({self.reason}); next reconnect attempt in "
                f"{self._next_attempt - now:.1f} s"
            )
        self._set_state(ConnectionState.CONNECTING, f"attempt {self._backoff.attempts + 1}")
        ok = await self._client.connect()
        if ok:
            self._backoff.reset()
            self._next_attempt = 0.0
            self._set_state(ConnectionState.ONLINE, "connected")
            return
        delay = self._backoff.next_delay()
        self._next_attempt = self._clock() + delay
        self._set_state(ConnectionState.OFFLINE, "connect failed")
        raise DriverError(f"{self.address.url}: cannot connect; next attempt in {delay:.1f} s")

    def mark_lost(self, reason: str) -> None:
        """The link is unusable: drop it so the next operation reconnects (with backoff)."""
        self._client.close()
        self._next_attempt = self._clock() + self._backoff.next_delay()
        self._set_state(ConnectionState.OFFLINE, reason)

    async def read(self, span: Span, unit: int) -> list[int]:
        """Read one span of registers from ``unit``; checks the answer's length."""
        what = f"read {span.table.value} registers {span.address}-{span.end - 1}"
        if span.table is Table.HOLDING:
            pdu = await self._execute(
                what,
                unit,
                lambda: self._client.read_holding_registers(
                    span.address, count=span.count, device_id=unit
                ),
            )
        else:
            pdu = await self._execute(
                what,
                unit,
                lambda: self._client.read_input_registers(
                    span.address, count=span.count, device_id=unit
                ),
            )
        registers = list(getattr(pdu, "registers", []))
        if len(registers) != span.count:
            raise FrameError(
                f"unit {unit} {what}: asked for {span.count} registers, "
                f"the answer has {len(registers)}"
            )
        return registers

    async def write(self, address: int, words: list[int], unit: int) -> None:
        """Write consecutive holding registers (FC16) on ``unit``; checks the echo."""
        what = f"write holding registers {address}-{address + len(words) - 1} = {words}"
        pdu = await self._execute(
            what,
            unit,
            lambda: self._client.write_registers(address, words, device_id=unit),
        )
        echo = (getattr(pdu, "address", None), getattr(pdu, "count", None))
        if echo != (address, len(words)):
            raise FrameError(f"unit {unit} {what}: the answer echoes {echo}")

    async def _execute(
        self, what: str, unit: int, call: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        await self.ensure_connected()
        # RTU frames carry no transaction id: after a timeout, let a late answer pass (it is
        # discarded) before the next request, so it cannot be taken for that request's answer.
        quiet = self._quiet_until - self._clock()
        if quiet > 0:
            await asyncio.sleep(quiet)
        self._start_request(unit)
        try:
            async with asyncio.timeout(self.timeout_s * 2 + 1):
                pdu = await call()
        except (ModbusIOException, TimeoutError) as exc:
            if self._foreign_unit is not None:
                raise FrameError(
                    f"{self.address.url} unit {unit} {what}: the answer came from unit id "
                    f"{self._foreign_unit}"
                ) from None
            if not self._client.connected:
                self.mark_lost(f"connection lost during {what}")
            if self._received:
                received = self._received
                self.abandon(f"garbage on the link during {what}")
                raise FrameError(
                    f"{self.address.url} unit {unit} {what}: {received} bytes received within "
                    f"{self.timeout_s} s, but no complete valid answer frame"
                ) from None
            if self.address.rtu:
                self._quiet_until = self._clock() + self.timeout_s
            raise DeviceTimeout(
                f"{self.address.url} unit {unit} {what}: no answer within {self.timeout_s} s"
            ) from exc
        except ConnectionException as exc:
            self.mark_lost(f"connection lost: {exc}")
            raise DriverError(f"{self.address.url} unit {unit} {what}: not connected") from exc
        except ModbusException as exc:  # any other pymodbus failure: a driver error, never a crash
            raise DriverError(f"{self.address.url} unit {unit} {what}: {exc}") from exc
        self._set_state(ConnectionState.ONLINE, "connected")
        if pdu.isError():
            raise _exception_response(f"{self.address.url} unit {unit} {what}", pdu.exception_code)
        if pdu.dev_id != unit and not (self.address.kind is LinkKind.TCP and pdu.dev_id == 0):
            raise FrameError(
                f"{self.address.url} unit {unit} {what}: the answer came from unit id {pdu.dev_id}"
            )
        return pdu

    def abandon(self, reason: str) -> None:
        """A request ended without its answer, and bytes may still be on the way (a late,
        trickling or garbled answer). A TCP stream is then out of step: drop the connection
        so that the next request starts on a clean one. An RTU line is let go quiet for one
        timeout instead, so that the late bytes pass before the next request."""
        if self.address.rtu:
            self._quiet_until = self._clock() + self.timeout_s
        elif self._client.connected:
            self.mark_lost(reason)

    def close(self) -> None:
        self._client.close()
        self._set_state(ConnectionState.OFFLINE, "closed")


def _exception_response(where: str, code: int) -> DriverError:
    """The error for an exception response. Only codes that say the request was not acted on
    are a refusal (DeviceRejected); 11 means the device behind a gateway did not answer
    (DeviceTimeout); any other (device failure, acknowledge, parity, unknown) may have acted,
    so it is a plain DriverError: a write answered so is never taken as refused."""
    name = ExcCodes(code).name if code in ExcCodes._value2member_map_ else "unknown"
    text = f"{where}: exception response {code} ({name})"
    if code in NOT_PERFORMED:
        return DeviceRejected(text)
    if code == ExcCodes.GATEWAY_NO_RESPONSE:
        return DeviceTimeout(f"{text}: the device behind the gateway did not answer")
    return DriverError(f"{text}: the request may have been acted on")


class BusRegistry:
    """Shared buses keyed by URL: pumps on one RTU line or TCP endpoint share one client."""

    def __init__(self) -> None:
        self._buses: dict[str, ModbusBus] = {}

    def acquire(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        baudrate: int = 19200,
        backoff: Backoff | None = None,
    ) -> ModbusBus:
        """The bus for ``url`` (created on first use); release it with :meth:`release`."""
        address = parse_url(url)
        bus = self._buses.get(address.url)
        if bus is None:
            bus = ModbusBus(address, timeout_s=timeout_s, baudrate=baudrate, backoff=backoff)
            self._buses[address.url] = bus
        elif address.rtu and bus.baudrate != baudrate:
            raise DriverError(f"{url}: already open at {bus.baudrate} baud, requested {baudrate}")
        bus.users += 1
        return bus

    def release(self, bus: ModbusBus) -> None:
        """Drop one user; the last one closes the link."""
        bus.users -= 1
        if bus.users <= 0 and self._buses.get(bus.address.url) is bus:
            del self._buses[bus.address.url]
            bus.close()

    def __len__(self) -> int:
        return len(self._buses)


#: The process-wide registry used by drivers that are not given one.
DEFAULT_REGISTRY = BusRegistry()
