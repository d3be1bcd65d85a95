"""Every write ends in a WriteResult, whatever the pump or the wire does (real pymodbus server,
a real TCP proxy that mangles chosen answers).

* nothing reached the pump (offline, the pre-read failed) -> ``failed``, "not sent: <reason>";
* the write may have reached it but was not confirmed -> ``uncertain``, never resent;
* the device refused -> ``failed`` only if the read-back proves nothing changed, ``applied`` if
  it shows the change all the same, else ``uncertain``;
* a transaction never holds the bus past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import pytest

from drivers.backoff import Backoff
from drivers.base import PumpStatus, RunState, WriteOutcome, WriteResult
from drivers.errors import DeviceTimeout, DriverError
from drivers.modbus import BusRegistry, ModbusPumpDriver
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import FAST_TIMEOUT_S, demo_pump
from tests.modbus.wire import FaultyLink, Mangle, Phase, faulty_link

WRITE_MULTIPLE = 16
NEW_RATE = Decimal("60.00")

Write = Callable[[ModbusPumpDriver], Awaitable[WriteResult]]
WRITES: dict[str, Write] = {
    "set_rate": lambda d: d.set_rate(NEW_RATE),
    "start": lambda d: d.start(),
    "stop": lambda d: d.stop(),
    "pause": lambda d: d.pause(),
    "acknowledge_alarms": lambda d: d.acknowledge_alarms(),
}


def instant_backoff() -> Backoff:
    """Reconnect on the next use: these tests are about outcomes, not about backoff."""
    return Backoff(initial_s=1e-6, maximum_s=1e-6, rng=lambda: 0.0)


@contextlib.asynccontextmanager
async def proxied(
    sim: ModbusPumpSimulator, *, timeout_s: float = FAST_TIMEOUT_S, **kwargs: object
) -> AsyncIterator[tuple[FaultyLink, ModbusPumpDriver, BusRegistry]]:
    """``sim`` served on loopback, a faulty link in front of it, a driver for unit 1."""
    registry = BusRegistry()
    async with sim.serving("tcp://127.0.0.1:0") as served, faulty_link(served.url) as link:
        driver = ModbusPumpDriver(
            link.url,
            1,
            registry=registry,
            timeout_s=timeout_s,
            backoff=instant_backoff(),
            **kwargs,  # type: ignore[arg-type]
        )
        await driver.connect()
        try:
            yield link, driver, registry
        finally:
            await driver.close()


def writes_on_the_wire(sim: ModbusPumpSimulator) -> int:
    return sum(1 for r in sim.requests if r.function_code == WRITE_MULTIPLE)


# -- nothing sent: failed -------------------------------------------------------------------


PRE_READ_FAULTS: dict[str, tuple[Callable[[ModbusPumpSimulator, FaultyLink], None], str]] = {
    "silence": (lambda s, _l: s.inject("no_answer", unit=1), "no answer within 0.3 s"),
    "garbage": (lambda s, _l: s.inject("garbage", unit=1), "but no complete valid answer frame"),
    "wrong_unit": (
        lambda s, _l: s.inject("wrong_unit", unit=1),
        "the answer came from unit id 2",
    ),
    "trickle": (
        lambda _s, link: link.faults.update({Phase.PRE_READ: Mangle.TRICKLE}),
        "but no complete valid answer frame",
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", sorted(PRE_READ_FAULTS))
@pytest.mark.parametrize("method", sorted(WRITES))
async def test_a_failed_pre_read_sends_nothing_and_fails_naming_the_reason(
    method: str, fault: str
) -> None:
    """Silence, garbage, another unit id or a trickle answering the pre-read: the method
    returns ``failed`` with "not sent: <reason>" (it never raises) and no write reaches the
    pump."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (link, driver, _registry):
        link.trickle_s = 0.02  # 61 bytes of status answer: 1.2 s, past the 0.3 s timeout
        inject, reason = PRE_READ_FAULTS[fault]
        inject(sim, link)
        writes = writes_on_the_wire(sim)
        result = await WRITES[method](driver)
        assert result.outcome is WriteOutcome.FAILED
        assert result.detail.startswith(f"not sent: {method.replace('set_rate', 'apply_rate')}")
        assert reason in result.detail
        assert result.readback is None
        assert writes_on_the_wire(sim) == writes
        assert sim.pump(1).writes == 0


@pytest.mark.asyncio
async def test_a_write_without_a_connection_fails_not_sent() -> None:
    """A driver never connected (or closed) answers ``failed`` "not sent", it does not raise."""
    driver = ModbusPumpDriver("tcp://127.0.0.1:1", 1, registry=BusRegistry())
    result = await driver.stop()
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: stop (stopped): ")
    assert "call connect()" in result.detail


@pytest.mark.asyncio
async def test_an_unreachable_pump_fails_not_sent() -> None:
    """Nobody listens at the pump's address: ``failed``, "not sent", naming the connect."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        driver = ModbusPumpDriver(
            url, 1, registry=BusRegistry(), timeout_s=FAST_TIMEOUT_S, backoff=instant_backoff()
        )
        with pytest.raises(DriverError, match="cannot connect"):
            await driver.connect()
        try:
            result = await driver.set_rate(NEW_RATE)
            assert result.outcome is WriteOutcome.FAILED
            assert result.detail.startswith("not sent: apply_rate (rate 60.00 mL/h): ")
            assert "cannot connect" in result.detail
        finally:
            await driver.close()


# -- sent, not confirmed: uncertain ---------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("phase", "mangle"),
    [
        (Phase.WRITE, Mangle.SILENCE),
        (Phase.WRITE, Mangle.GARBAGE),
        (Phase.WRITE, Mangle.WRONG_UNIT),
        (Phase.WRITE, Mangle.TRICKLE),
        (Phase.READ_BACK, Mangle.SILENCE),
        (Phase.READ_BACK, Mangle.GARBAGE),
        (Phase.READ_BACK, Mangle.WRONG_UNIT),
        (Phase.READ_BACK, Mangle.TRICKLE),
    ],
    ids=lambda v: v.value,
)
async def test_a_write_sent_but_not_confirmed_is_uncertain_and_never_resent(
    phase: Phase, mangle: Mangle
) -> None:
    """The pump executes the write, but its answer (or the read-back) is lost, garbled, from
    another unit id or trickled past the timeout: ``uncertain``, the write went out exactly
    once, and the next poll (link healthy again) shows what really happened."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (link, driver, _registry):
        link.trickle_s = 0.05  # even the 12-byte write answer takes 0.6 s: past the timeout
        link.faults[phase] = mangle
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
        assert "not resent" in result.detail
        assert link.mangled[phase] == 1
        assert writes_on_the_wire(sim) == 1
        assert sim.pump(1).rate == NEW_RATE
        link.faults.clear()
        assert (await driver.read_status()).rate_ml_h == NEW_RATE
        assert writes_on_the_wire(sim) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("method", sorted(WRITES))
async def test_every_write_method_is_uncertain_when_its_answer_is_garbage(method: str) -> None:
    """The same rule holds for start, stop, pause and acknowledge_alarms as for set_rate."""
    sim = ModbusPumpSimulator([demo_pump(1, status="paused")])
    async with proxied(sim) as (link, driver, _registry):
        link.faults[Phase.WRITE] = Mangle.GARBAGE
        result = await WRITES[method](driver)
        assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
        assert "sent, not confirmed" in result.detail
        assert writes_on_the_wire(sim) == 1


# -- the device refused, or did something else ----------------------------------------------


@pytest.mark.asyncio
async def test_refused_but_applied_is_applied_with_the_refusal_in_the_detail() -> None:
    """last_result says "not allowed" but the read-back shows the requested rate: the pump
    runs it, so the outcome is ``applied`` (the detail keeps the device's word)."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        sim.inject("refuse_but_apply", unit=1)
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.APPLIED
        assert result.readback is not None
        assert result.readback.rate_ml_h == NEW_RATE
        assert "refused by the device: not_allowed" in result.detail
        assert "yet the read-back shows rate 60.00 mL/h" in result.detail
        paused = await driver.pause()
        assert paused.outcome is WriteOutcome.APPLIED
        assert paused.readback is not None
        assert paused.readback.state is RunState.PAUSED


@pytest.mark.asyncio
async def test_a_pump_that_executes_something_else_is_uncertain() -> None:
    """last_result ok but the read-back shows another rate (6.00 for 60.00): ``uncertain``,
    with the read-back, so the channel sees the real rate; never ``applied``."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        sim.inject("misexecute", unit=1)
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.UNCERTAIN
        assert result.readback is not None
        assert result.readback.rate_ml_h == Decimal("6.00")
        assert "executed but the read-back is not rate 60.00 mL/h" in result.detail


@pytest.mark.asyncio
async def test_refused_and_changed_to_something_else_is_uncertain() -> None:
    """The device says no but the rate moved (not to the request): neither failed nor
    applied."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        sim.inject("refuse_but_apply", unit=1)
        sim.inject("misexecute", 33, unit=1)
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.UNCERTAIN
        assert result.readback is not None
        assert result.readback.rate_ml_h == Decimal("33.00")
        assert "but the pump changed" in result.detail


# -- every transaction ends in time ---------------------------------------------------------

SLOW_TIMEOUT_S = 5.0  # per request: the trickle below never reaches it
DEADLINE_S = 0.5  # per transaction


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("phase", "outcome"),
    [
        (Phase.PRE_READ, WriteOutcome.FAILED),
        (Phase.WRITE, WriteOutcome.UNCERTAIN),
        (Phase.READ_BACK, WriteOutcome.UNCERTAIN),
    ],
    ids=lambda v: v.value,
)
async def test_a_trickling_pump_holds_the_shared_bus_only_until_the_transaction_deadline(
    phase: Phase, outcome: WriteOutcome
) -> None:
    """Pump 1 trickles an answer (one byte per 50 ms: seconds per answer, yet inside the
    per-request timeout). Its command ends at the transaction deadline (before the trickle:
    failed "not sent"; after the write went out: uncertain), and pump 2 on the same TCP bus,
    waiting for the lock meanwhile, is then served at once."""
    sim = ModbusPumpSimulator([demo_pump(1), demo_pump(2)])
    async with proxied(sim, timeout_s=SLOW_TIMEOUT_S, transaction_s=DEADLINE_S) as (
        link,
        one,
        registry,
    ):
        two = ModbusPumpDriver(link.url, 2, registry=registry, timeout_s=SLOW_TIMEOUT_S)
        await two.connect()
        try:
            link.unit, link.trickle_s = 1, 0.05
            link.faults[phase] = Mangle.TRICKLE
            started = time.monotonic()
            command = asyncio.create_task(one.set_rate(NEW_RATE))
            poll = asyncio.create_task(two.read_status())
            result = await command
            commanded = time.monotonic() - started
            status = await poll
            polled = time.monotonic() - started
            assert result.outcome is outcome, result.detail
            assert "transaction deadline of 0.5 s" in result.detail
            assert link.mangled[phase] == 1
            assert commanded < SLOW_TIMEOUT_S / 2  # the trickle alone takes 3 s or more
            assert status.state is RunState.INFUSING
            assert polled < SLOW_TIMEOUT_S / 2
            link.faults.clear()
            expected = Decimal("52.50") if outcome is WriteOutcome.FAILED else NEW_RATE
            assert (await one.read_status()).rate_ml_h == expected  # not a stale answer
        finally:
            await two.close()


@pytest.mark.asyncio
async def test_a_trickled_poll_past_the_deadline_is_a_device_timeout_naming_it() -> None:
    """read_status under the same trickle raises DeviceTimeout naming the deadline."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim, timeout_s=SLOW_TIMEOUT_S, transaction_s=DEADLINE_S) as (
        link,
        driver,
        _registry,
    ):
        link.trickle_s = 0.05
        link.faults[Phase.PRE_READ] = Mangle.TRICKLE
        with pytest.raises(
            DeviceTimeout, match=r"status poll: not complete within the transaction deadline"
        ):
            await driver.read_status()
        link.faults.clear()
        assert (await driver.read_status()).rate_ml_h == Decimal("52.50")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "name"),
    [
        (4, "DEVICE_FAILURE"),
        (5, "ACKNOWLEDGE"),
        (8, "MEMORY_PARITY_ERROR"),
        (11, "GATEWAY_NO_RESPONSE"),
    ],
)
async def test_an_exception_that_may_have_acted_is_uncertain_not_refused(
    code: int, name: str
) -> None:
    """Exception 4 (failed while acting), 5 (will act later), 8 or 11 (the device behind a
    gateway did not answer) to the write: the write may have taken effect, so ``uncertain``
    even though the rate did change, never ``failed``."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        sim.inject("write_exception", code, unit=1)
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
        assert f"exception response {code} ({name})" in result.detail
        assert sim.pump(1).rate == NEW_RATE
        assert writes_on_the_wire(sim) == 1


@pytest.mark.asyncio
async def test_a_write_refused_with_busy_yet_applied_is_applied() -> None:
    """Exception 6 (busy: "not acted on") to the write, but the read-back shows the new rate:
    the read-back wins, ``applied``, and the detail keeps the device's word."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        sim.inject("write_exception", 6, unit=1)
        result = await driver.set_rate(NEW_RATE)
        assert result.outcome is WriteOutcome.APPLIED, result.detail
        assert "exception response 6 (DEVICE_BUSY)" in result.detail
        assert result.readback is not None
        assert result.readback.rate_ml_h == NEW_RATE


@pytest.mark.asyncio
@pytest.mark.parametrize("method", sorted(WRITES))
async def test_the_before_write_hook_runs_after_the_pre_read_and_can_stop_the_write(
    method: str,
) -> None:
    """The gateway's hook is awaited after the pre-read and before any write frame: when it
    answers False nothing is written (``failed``, "not sent"); when True the write goes out."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with proxied(sim) as (_link, driver, _registry):
        seen: list[tuple[int, PumpStatus]] = []

        async def refuse(before: PumpStatus) -> bool:
            seen.append((sim.pump(1).writes, before))
            return False

        driver.before_write = refuse
        result = await WRITES[method](driver)
        assert [writes for writes, _ in seen] == [0]
        now = await driver.read_status()  # nothing was written: the pump still shows the pre-read
        assert (seen[0][1].state, seen[0][1].rate_ml_h) == (now.state, now.rate_ml_h)
        assert result.outcome is WriteOutcome.FAILED
        assert result.detail.startswith("not sent: ")
        assert "could not record the write" in result.detail
        assert sim.pump(1).writes == 0

        async def allow(_before: PumpStatus) -> bool:
            return True

        driver.before_write = allow
        result = await WRITES[method](driver)
        assert result.outcome is not WriteOutcome.FAILED or "not sent" not in result.detail
        assert sim.pump(1).writes >= 1
