"""ModbusPumpDriver: the driver contract (drivers/base.py) over a register-map profile.

Every register address, scale and code comes from the profile (``generic-pump-v1`` by default);
a vendor with another map needs a new TOML file, not new code.

Commands are confirmed: under the bus lock the driver reads the status block (to learn the last
``executed_seq`` and what "unchanged" means), writes ``[rate_setpoint,] command, command_seq`` with
``command_seq`` last, then reads back until ``executed_seq`` echoes the sequence number:

* ``last_result`` ok and the read-back shows the requested rate/state -> ``applied``;
* the device refused (``last_result`` not ok, or an exception response to the write): ``failed``
  only if the read-back proves rate and state unchanged, ``applied`` if it shows the requested
  change all the same, ``uncertain`` otherwise;
* no answer, garbage, a wrong unit id or a timeout after the write went out, or a failed
  read-back -> ``uncertain``; the write is never resent;
* nothing sent (offline, a value outside the map's range, the pre-read failed) -> ``failed``
  with a detail starting ``not sent:`` and the reason.

Write methods never raise for a device or transport fault. Every transaction (a poll, a command)
holds the bus for at most ``transaction_s`` (default four request timeouts): a pump that answers
slowly or trickles its bytes cannot starve the other pumps of a bus. Every read value is
range-checked by the map codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import structlog

from drivers.backoff import Backoff
from drivers.base import (
    AlarmCode,
    Capabilities,
    ConnectionState,
    Driver,
    Identity,
    PumpStatus,
    RunState,
    WriteOutcome,
    WriteResult,
)
from drivers.errors import DeviceRejected, DeviceTimeout, DriverError, FrameError
from drivers.modbus.bus import DEFAULT_REGISTRY, BusRegistry, ModbusBus
from drivers.modbus.regmap import Decoder, RegisterMap, Span, Value, load_profile

log = structlog.get_logger("infusiond.drivers.modbus")

STATUS_FIELDS = (
    "map_version",
    "status",
    "alarms",
    "rate",
    "vtbi",
    "volume_infused",
    "battery",
    "heartbeat",
    "comm_timeout_s",
    "executed_seq",
    "last_result",
)
IDENTITY_FIELDS = ("model", "serial", "firmware", "max_rate")
RESULT_OK = "ok"
CONFIRM_INTERVAL_S = 0.02
#: default transaction deadline, in request timeouts: one transaction holds the bus for at most
#: this long (a command is a pre-read, the write and its confirmation reads)
TRANSACTION_TIMEOUTS = 4


class ModbusPumpDriver(Driver):
    """One pump (one unit id) on a Modbus TCP connection or RTU bus."""

    kind = "modbus"

    def __init__(
        self,
        url: str,
        unit_id: int = 1,
        *,
        profile: RegisterMap | str | Path = "generic-pump-v1",
        timeout_s: float = 1.0,
        transaction_s: float | None = None,
        baudrate: int = 19200,
        confirm_reads: int = 5,
        heartbeat_polls: int = 3,
        heartbeat_min_s: float = 2.5,
        registry: BusRegistry | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise DriverError(f"unit id {unit_id} outside 1..247")
        self.url = url
        self.unit_id = unit_id
        self.map = profile if isinstance(profile, RegisterMap) else load_profile(profile)
        self._check_profile()
        self._timeout_s = timeout_s
        self._transaction_s = (
            transaction_s if transaction_s is not None else timeout_s * TRANSACTION_TIMEOUTS
        )
        self._baudrate = baudrate
        self._confirm_reads = max(1, confirm_reads)
        self._heartbeat_polls = heartbeat_polls
        self._heartbeat_min_s = heartbeat_min_s
        self._registry = registry if registry is not None else DEFAULT_REGISTRY
        self._backoff = backoff
        self._clock = clock
        self._bus: ModbusBus | None = None
        self._state = ConnectionState.CONNECTING
        self._reason = "not connected yet"
        self._status = self.map.decoder(n for n in STATUS_FIELDS if n in self.map)
        self._identity = self.map.decoder(n for n in IDENTITY_FIELDS if n in self.map)
        self._max_rate: Decimal | None = None
        self._hb_value: int | None = None
        self._hb_since = 0.0
        self._hb_same = 0
        self._watchdog_s = 0
        self._last_feed = 0.0

    def _check_profile(self) -> None:
        codes = {a.value for a in AlarmCode}
        bad = [n for n in self.map["alarms"].bits.values() if n not in codes]
        if bad:
            raise DriverError(f"profile {self.map.name}: alarm bits {bad} are not alarm codes")

    # -- contract: state -------------------------------------------------------------------

    @property
    def connection(self) -> ConnectionState:
        return self._state

    @property
    def connection_reason(self) -> str:
        """Why the connection is in its current state (for events and logs)."""
        return self._reason

    @property
    def status_plan(self) -> tuple[Span, ...]:
        """The read requests of one poll (one per span)."""
        return self._status.spans

    @property
    def capabilities(self) -> Capabilities:
        sp = self.map["rate_setpoint"]
        maximum = self._max_rate or sp.maximum or Decimal("9999.99")
        return Capabilities(
            min_rate_ml_h=sp.minimum or Decimal(0),
            max_rate_ml_h=maximum,
            resolution_ml_h=sp.scale,
            supports_watchdog="comm_timeout_s" in self.map,
            supports_vtbi="vtbi" in self.map,
        )

    def _set_state(self, state: ConnectionState, reason: str) -> None:
        if (state, reason) != (self._state, self._reason):
            log.info(
                "pump connection",
                url=self.url,
                unit=self.unit_id,
                state=state.value,
                reason=reason,
            )
        self._state, self._reason = state, reason

    # -- contract: lifecycle ---------------------------------------------------------------

    async def connect(self) -> None:
        """Join the shared bus and read identity/max rate. Raises DriverError if unreachable;
        later operations reconnect by themselves (capped backoff with jitter)."""
        if self._bus is None:
            self._bus = self._registry.acquire(
                self.url, timeout_s=self._timeout_s, baudrate=self._baudrate, backoff=self._backoff
            )
        await self.identity()

    async def close(self) -> None:
        if self._bus is not None:
            self._registry.release(self._bus)
            self._bus = None
        self._set_state(ConnectionState.OFFLINE, "closed")

    def _require_bus(self) -> ModbusBus:
        if self._bus is None:
            raise DriverError(f"{self.url} unit {self.unit_id}: not connected (call connect())")
        return self._bus

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[ModbusBus]:
        """Hold the bus for one transaction, bounded by the transaction deadline: a device
        that answers slowly (or trickles its bytes) cannot keep the bus from the other pumps.
        Past the deadline the request in flight is abandoned and DeviceTimeout is raised."""
        bus = self._require_bus()
        async with bus.lock:
            try:
                async with asyncio.timeout(self._transaction_s):
                    yield bus
            except TimeoutError:
                bus.abandon(f"unit {self.unit_id} {what}: transaction deadline passed")
                self._set_state(ConnectionState.OFFLINE, f"unit {self.unit_id} too slow")
                raise DeviceTimeout(
                    f"{self.url} unit {self.unit_id} {what}: not complete within the "
                    f"transaction deadline of {self._transaction_s} s"
                ) from None

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, decoder: Decoder) -> dict[str, Value]:
        """Read and decode one plan (bus lock held by the caller); tracks the link state."""
        bus = self._require_bus()
        try:
            blocks = [await bus.read(span, self.unit_id) for span in decoder.spans]
        except DeviceTimeout as exc:
            self._set_state(ConnectionState.OFFLINE, f"no answer from unit {self.unit_id}")
            raise exc from None
        except (DeviceRejected, FrameError):
            self._set_state(ConnectionState.ONLINE, "answering")
            raise
        except DriverError as exc:
            self._set_state(
                ConnectionState.CONNECTING
                if bus.state is ConnectionState.CONNECTING
                else ConnectionState.OFFLINE,
                bus.reason,
            )
            raise exc from None
        self._set_state(ConnectionState.ONLINE, "answering")
        try:
            return decoder.decode(blocks)
        except FrameError as exc:
            raise FrameError(f"unit {self.unit_id}: {exc}") from None

    async def identity(self) -> Identity:
        async with self._transaction("identity"):
            values = await self._read(self._identity)
        if "max_rate" in values:
            self._max_rate = _decimal(values["max_rate"])
        return Identity(
            model=str(values.get("model", "")),
            serial=str(values.get("serial", "")),
            firmware=str(values.get("firmware", "")),
        )

    async def read_status(self) -> PumpStatus:
        """One poll. Also keeps the device configured: re-arms the comm watchdog if the pump
        lost it (power reset) and reads max_rate once if connect() could not."""
        async with self._transaction("status poll"):
            values = await self._read(self._status)
            await self._keep_watchdog(values.get("comm_timeout_s"))
        if self._max_rate is None and "max_rate" in self.map:
            try:
                await self.identity()
            except DriverError as exc:  # the status is good; identity is retried next poll
                log.warning("identity not read", url=self.url, unit=self.unit_id, error=str(exc))
        return self._to_status(values, track_heartbeat=True)

    def _to_status(self, values: Mapping[str, Value], *, track_heartbeat: bool) -> PumpStatus:
        state = RunState(self.map.status_name(_int(values["status"])))
        flags = values["alarms"]
        alarms = {AlarmCode(f) for f in flags} if isinstance(flags, frozenset) else set()
        heartbeat = _int(values["heartbeat"])
        if track_heartbeat and self._heartbeat_frozen(heartbeat):
            alarms.add(AlarmCode.HEARTBEAT_FROZEN)
        battery = values.get("battery")
        return PumpStatus(
            state=state,
            rate_ml_h=_decimal(values["rate"]),
            alarms=frozenset(alarms),
            vtbi_ml=_decimal(values["vtbi"]) if "vtbi" in values else None,
            volume_infused_ml=(
                _decimal(values["volume_infused"]) if "volume_infused" in values else None
            ),
            battery_pct=_int(battery) if battery is not None else None,
            heartbeat=heartbeat,
        )

    def _heartbeat_frozen(self, value: int) -> bool:
        now = self._clock()
        if value != self._hb_value:
            self._hb_value, self._hb_since, self._hb_same = value, now, 0
            return False
        self._hb_same += 1
        return (
            self._hb_same >= self._heartbeat_polls and now - self._hb_since >= self._heartbeat_min_s
        )

    # -- watchdog --------------------------------------------------------------------------

    async def configure_watchdog(self, timeout_s: int) -> None:
        """Arm the pump's comm watchdog (register comm_timeout_s; 0 disables). The driver then
        feeds it from read_status by writing 0 (no command) to ``command`` every timeout/3;
        commands only execute when command_seq is written, so this changes nothing."""
        if "comm_timeout_s" not in self.map:
            raise DriverError(f"profile {self.map.name} has no comm_timeout_s register")
        field = self.map["comm_timeout_s"]
        words = field.encode(timeout_s, self.map.word_order)
        async with self._transaction("configure watchdog") as bus:
            await bus.write(field.address, words, self.unit_id)
            back = await self._read(self.map.decoder(["comm_timeout_s"]))
        if back["comm_timeout_s"] != timeout_s:
            raise DriverError(
                f"unit {self.unit_id} {field.where}: wrote {timeout_s}, reads back "
                f"{back['comm_timeout_s']}"
            )
        self._watchdog_s = timeout_s
        self._last_feed = self._clock()
        log.info("watchdog configured", url=self.url, unit=self.unit_id, timeout_s=timeout_s)

    async def _keep_watchdog(self, device_timeout: Value | None) -> None:
        """Re-arm a watchdog the pump forgot; feed it every third of its timeout."""
        if not self._watchdog_s:
            return
        bus = self._require_bus()
        if device_timeout is not None and device_timeout != self._watchdog_s:
            log.warning(
                "pump lost its watchdog setting; re-arming",
                url=self.url,
                unit=self.unit_id,
                device_value=str(device_timeout),
                timeout_s=self._watchdog_s,
            )
            field = self.map["comm_timeout_s"]
            await bus.write(
                field.address, field.encode(self._watchdog_s, self.map.word_order), self.unit_id
            )
        if self._clock() - self._last_feed >= self._watchdog_s / 3:
            await bus.write(self.map["command"].address, [0], self.unit_id)
            self._last_feed = self._clock()

    # -- confirmed commands ----------------------------------------------------------------

    async def set_rate(self, rate_ml_h: Decimal) -> WriteResult:
        rate = Decimal(rate_ml_h)
        return await self._command(
            "apply_rate",
            setpoint=rate,
            check=lambda s: s.rate_ml_h == rate,
            expected=f"rate {rate} mL/h",
        )

    async def start(self) -> WriteResult:
        return await self._command(
            "start", check=lambda s: s.state is RunState.INFUSING, expected="infusing"
        )

    async def stop(self) -> WriteResult:
        # a pump in alarm accepts stop and stays in alarm: either way nothing is delivered
        return await self._command(
            "stop",
            check=lambda s: s.state in (RunState.STOPPED, RunState.ALARM),
            expected="stopped",
        )

    async def pause(self) -> WriteResult:
        return await self._command(
            "pause", check=lambda s: s.state is RunState.PAUSED, expected="paused"
        )

    async def acknowledge_alarms(self) -> WriteResult:
        return await self._command(
            "acknowledge_alarms", check=lambda _s: True, expected="alarms acknowledged"
        )

    async def clear_volume(self) -> WriteResult:
        """Reset volume_infused to 0 (device refuses while infusing)."""
        return await self._command(
            "clear_volume",
            check=lambda s: s.volume_infused_ml in (None, Decimal(0)),
            expected="volume cleared",
        )

    def _write_groups(self, values: dict[str, Value]) -> list[tuple[int, list[int]]]:
        """Consecutive-register writes, ``command_seq`` in the last one (it triggers)."""
        seq_field = self.map["command_seq"]
        words = self.map.encode({k: v for k, v in values.items() if k != "command_seq"})
        seq_words = seq_field.encode(values["command_seq"], self.map.word_order)
        groups: list[tuple[int, list[int]]] = []
        for addr in sorted(words):
            if groups and groups[-1][0] + len(groups[-1][1]) == addr:
                groups[-1][1].append(words[addr])
            else:
                groups.append((addr, [words[addr]]))
        if groups and groups[-1][0] + len(groups[-1][1]) == seq_field.address:
            groups[-1][1].extend(seq_words)
        else:
            groups.append((seq_field.address, seq_words))
        return groups

    async def _command(
        self,
        name: str,
        *,
        check: Callable[[PumpStatus], bool],
        expected: str,
        setpoint: Decimal | None = None,
    ) -> WriteResult:
        """One confirmed command. Never raises for a device or transport fault: nothing sent
        -> ``failed`` ("not sent: ..."); sent and not confirmed -> ``uncertain``."""
        try:
            values: dict[str, Value] = {"command": self.map.command(name)}
            if setpoint is not None:
                values["rate_setpoint"] = setpoint
            values["command_seq"] = 0
            self._write_groups(values)  # range-check everything before anything is sent
            bus = self._require_bus()
        except DriverError as exc:
            return _not_sent(name, expected, exc)
        attempt = _Attempt(name, expected, check, values)
        try:
            async with self._transaction(name) as locked:
                return await self._exchange(locked, attempt)
        except DriverError as exc:
            if attempt.frames_at_write is None or bus.frames_sent == attempt.frames_at_write:
                return _not_sent(name, expected, exc)
            return WriteResult(
                WriteOutcome.UNCERTAIN,
                detail=f"{name} ({expected}, seq {attempt.seq}) sent, not confirmed: {exc}; "
                "outcome unknown, not resent",
            )

    async def _exchange(self, bus: ModbusBus, attempt: _Attempt) -> WriteResult:
        """Pre-read, write (``command_seq`` last), confirm; bus lock and deadline held by the
        caller. A DriverError out of here is mapped by whether the write went out."""
        name, values = attempt.name, attempt.values
        before_values = await self._read(self._status)
        before = self._to_status(before_values, track_heartbeat=False)
        attempt.seq = (_int(before_values["executed_seq"]) + 1) & 0xFFFF or 1
        values["command_seq"] = attempt.seq
        setpoint = values.get("rate_setpoint")
        log.info(
            "modbus command",
            url=self.url,
            unit=self.unit_id,
            command=name,
            code=values["command"],
            seq=attempt.seq,
            setpoint=str(setpoint) if setpoint is not None else None,
        )
        if not await self.may_write(before):
            return WriteResult(
                WriteOutcome.FAILED,
                readback=before,
                detail=f"not sent: {name} ({attempt.expected}): the gateway could not record "
                "the write",
            )
        attempt.frames_at_write = bus.frames_sent
        try:
            for address, words in self._write_groups(values):
                await bus.write(address, words, self.unit_id)
        except DeviceRejected as exc:
            return await self._refused_write(attempt, before, str(exc))
        if self._watchdog_s:
            self._last_feed = self._clock()
        return await self._confirm(attempt, before)

    def _judge_refusal(
        self, attempt: _Attempt, before: PumpStatus, after: PumpStatus, detail: str
    ) -> WriteResult:
        """The device said no: ``failed`` only if the read-back proves nothing changed;
        ``applied`` if it shows the requested change all the same; else ``uncertain``."""
        if _same_delivery(before, after):
            return WriteResult(WriteOutcome.FAILED, readback=after, detail=detail)
        if attempt.check(after):
            log.warning(
                "device refused a command but applied it",
                url=self.url,
                unit=self.unit_id,
                command=attempt.name,
                detail=detail,
            )
            return WriteResult(
                WriteOutcome.APPLIED,
                readback=after,
                detail=f"{detail}; yet the read-back shows {attempt.expected}",
            )
        return WriteResult(
            WriteOutcome.UNCERTAIN,
            readback=after,
            detail=f"{detail}; but the pump changed and the read-back is not {attempt.expected}",
        )

    async def _refused_write(self, attempt: _Attempt, before: PumpStatus, why: str) -> WriteResult:
        after = self._to_status(await self._read(self._status), track_heartbeat=False)
        return self._judge_refusal(attempt, before, after, f"{attempt.name} refused: {why}")

    async def _confirm(self, attempt: _Attempt, before: PumpStatus) -> WriteResult:
        name, seq = attempt.name, attempt.seq
        values: dict[str, Value] = {}
        for n in range(self._confirm_reads):
            if n:
                await asyncio.sleep(CONFIRM_INTERVAL_S)  # give the device time to execute
            values = await self._read(self._status)
            if values["executed_seq"] == seq:
                break
        else:
            return WriteResult(
                WriteOutcome.UNCERTAIN,
                readback=self._to_status(values, track_heartbeat=False),
                detail=f"{name} (seq {seq}) sent; executed_seq still {values['executed_seq']}",
            )
        after = self._to_status(values, track_heartbeat=False)
        result = self.map.result_name(_int(values["last_result"]))
        if result == RESULT_OK:
            if attempt.check(after):
                return WriteResult(
                    WriteOutcome.APPLIED, readback=after, detail=f"{name}: {attempt.expected}"
                )
            return WriteResult(
                WriteOutcome.UNCERTAIN,
                readback=after,
                detail=f"{name} executed but the read-back is not {attempt.expected}",
            )
        detail = f"{name} refused by the device: {result} (last_result {values['last_result']})"
        judged = self._judge_refusal(attempt, before, after, detail)
        if judged.outcome is WriteOutcome.FAILED:
            return WriteResult(
                WriteOutcome.FAILED, readback=after, detail=detail, extra={"reason": result}
            )
        return judged


@dataclass(slots=True)
class _Attempt:
    """What one command is doing, shared between its steps (mutable: the seq is learnt from
    the pre-read, and the frame count marks when the write started)."""

    name: str
    expected: str
    check: Callable[[PumpStatus], bool]
    values: dict[str, Value]
    seq: int | None = None
    frames_at_write: int | None = None  # the bus's frame count when the write started


def _not_sent(name: str, expected: str, exc: DriverError) -> WriteResult:
    return WriteResult(WriteOutcome.FAILED, detail=f"not sent: {name} ({expected}): {exc}")


def _same_delivery(a: PumpStatus, b: PumpStatus) -> bool:
    return a.state is b.state and a.rate_ml_h == b.rate_ml_h


def _int(value: Value) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    raise FrameError(f"expected an integer register value, got {value!r}")


def _decimal(value: Value) -> Decimal:
    if isinstance(value, int | Decimal):
        return Decimal(value)
    raise FrameError(f"expected a numeric register value, got {value!r}")
