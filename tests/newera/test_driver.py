"""NewEraPumpDriver against the simulator over TCP: outcomes, alarms, errors, modes, chains."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

import pytest

from drivers.backoff import Backoff
from drivers.base import AlarmCode, ConnectionState, PumpStatus, RunState, WriteOutcome, WriteResult
from drivers.errors import DeviceTimeout, DriverError, FrameError
from drivers.newera import NewEraPort, NewEraPumpDriver
from drivers.newera.frames import Alarm, Status
from drivers.serial.line import PortUnavailable
from drivers.serial.verify import Answer, Sent, Snapshot, judge
from sim_devices.newera_pump import Fault
from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator
from tests.newera.conftest import FAST_TIMEOUT_S


@pytest.mark.asyncio
async def test_status_identity_and_capabilities(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """The driver reads rate, state, volume; identity from VER; range from the diameter."""
    status = await pump0.read_status()
    assert status.state is RunState.INFUSING
    assert status.rate_ml_h == Decimal("9.0")
    assert status.volume_infused_ml is not None
    assert status.volume_infused_ml >= 0
    assert status.vtbi_ml is None
    ident = await pump0.identity()
    assert (ident.model, ident.firmware) == ("NE1000", "3.928")
    caps = pump0.capabilities
    assert caps.min_rate_ml_h < Decimal("0.1") < Decimal(1000) < caps.max_rate_ml_h
    assert caps.supports_watchdog
    assert pump0.connection is ConnectionState.ONLINE


@pytest.mark.asyncio
async def test_set_rate_is_applied_after_read_back(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """RAT is written then read back; the simulated pump delivers the new rate."""
    result = await pump0.set_rate(Decimal("52.5"))
    assert result.outcome is WriteOutcome.APPLIED
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal("52.5")
    assert sim.pumps[0].delivering_ml_h == Decimal("52.5")


@pytest.mark.asyncio
async def test_out_of_range_rate_fails_and_is_verified_unchanged(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """?OOR -> failed, with a read-back showing the old rate."""
    result = await pump0.set_rate(Decimal(5000))
    assert result.outcome is WriteOutcome.FAILED
    assert "?OOR" in result.detail
    assert "out of range" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal(9)
    assert sim.pumps[0].rate_ml_h == 9


REFUSALS = [
    ("?", "not recognised"),
    ("?NA", "not applicable"),
    ("?OOR", "out of range"),
    ("?COM", "invalid communications packet"),
    ("?IGN", "ignored"),
    ("A?R", "reset"),
    ("A?S", "stalled"),
    ("A?E", "program error"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "meaning"), REFUSALS)
async def test_a_refusal_verified_unchanged_is_failed_with_its_meaning(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, code: str, meaning: str
) -> None:
    """Every error code or alarm in reply to RAT, with the pump really unchanged: failed,
    naming the meaning, with a read-back showing the old rate and state."""
    sim.pumps[0].reject_with = code
    sim.pumps[0].inject(Fault.REJECT, count=1, on="RAT")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.FAILED
    assert meaning in result.detail
    assert "unchanged" in result.detail
    assert result.readback is not None
    assert (result.readback.rate_ml_h, result.readback.state) == (9, RunState.INFUSING)
    assert sim.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "meaning"), REFUSALS)
async def test_a_refusal_the_pump_applied_anyway_is_applied(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, code: str, meaning: str
) -> None:
    """The pump answers RAT with an error or an alarm yet changes the rate: the read-back
    decides, so the write is applied (never failed), and the detail says what it answered."""
    sim.pumps[0].reject_with = code
    sim.pumps[0].inject(Fault.REFUSE_BUT_APPLY, count=1, on="RAT")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert meaning in result.detail
    assert "shows it applied" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 12
    assert sim.pumps[0].rate_ml_h == 12


@pytest.mark.asyncio
@pytest.mark.parametrize("code", ["?NA", "A?R"])
async def test_stop_refused_but_executed_twice_is_applied(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, code: str
) -> None:
    """Both STPs of a stop answered with a refusal, both executed: the pump reads back
    stopped, so stop is applied; the second STP is sent because the read-back said paused."""
    pump = sim.pumps[0]
    pump.reject_with = code
    pump.inject(Fault.REFUSE_BUT_APPLY, count=2, on="STP")
    result = await pump0.stop()
    assert result.outcome is WriteOutcome.APPLIED
    assert pump.status is Status.STOPPED
    assert Fault.REFUSE_BUT_APPLY not in pump.faults  # both STPs went out


@pytest.mark.asyncio
@pytest.mark.parametrize("action", ["start", "pause"])
async def test_start_and_pause_refused_but_executed_are_applied(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, action: str
) -> None:
    """RUN (from paused) or STP (from infusing) answered ?NA yet executed: applied."""
    pump = sim.pumps[0]
    if action == "start":
        await pump0.pause()
    pump.reject_with = "?NA"
    pump.inject(Fault.REFUSE_BUT_APPLY, count=1, on="RUN" if action == "start" else "STP")
    result = await (pump0.start() if action == "start" else pump0.pause())
    assert result.outcome is WriteOutcome.APPLIED, result.detail
    assert pump.status is (Status.INFUSING if action == "start" else Status.PAUSED)


@pytest.mark.asyncio
@pytest.mark.parametrize("alarm", list(Alarm))
async def test_every_alarm_is_reported_and_latched_until_acknowledged(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, alarm: Alarm
) -> None:
    """A?R/A?S/A?T/A?E/A?O -> state alarm with its code, kept until acknowledged."""
    sim.pumps[0].raise_alarm(alarm)
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {alarm.code}
    assert status.rate_ml_h == 9  # the query was re-asked after the alarm report
    again = await pump0.read_status()
    assert again.alarms == {alarm.code}
    ack = await pump0.acknowledge_alarms()
    assert ack.outcome is WriteOutcome.APPLIED
    assert ack.readback is not None
    assert ack.readback.alarms == frozenset()
    assert ack.readback.state is RunState.STOPPED


@pytest.mark.asyncio
async def test_power_on_reset_alarm_is_seen_at_connect() -> None:
    """A freshly powered pump's A?R is latched by the driver at connect."""
    simulator = NewEraSimulator([NewEraPumpSetup(address=3)])
    async with simulator.serving("tcp://127.0.0.1:0"):
        driver = NewEraPumpDriver(simulator.url, 3, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        try:
            status = await driver.read_status()
        finally:
            await driver.close()
    assert status.alarms == {AlarmCode.DEVICE_RESET}
    assert status.state is RunState.ALARM


@pytest.mark.asyncio
async def test_write_answered_by_an_alarm_is_never_resent(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """A stall reported in reply to RAT (not executed): failed, and RAT went out once only:
    three pre-read queries, RAT, three read-back queries."""
    pump = sim.pumps[0]
    pump.reject_with = "A?S"
    pump.inject(Fault.REJECT, count=1, on="RAT")
    seen = pump.commands_seen
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.FAILED
    assert "stalled" in result.detail
    assert pump.rate_ml_h == 9
    assert pump.commands_seen == seen + 3 + 1 + 3


@pytest.mark.asyncio
async def test_a_latched_alarm_is_taken_by_the_pre_read_and_the_write_then_runs(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """A stalled pump reports A?S to the pre-read; the rate change then executes (the pump
    is stopped, not refusing), is applied, and the stall stays latched in the read-back."""
    sim.pumps[0].raise_alarm(Alarm.STALLED)
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert sim.pumps[0].rate_ml_h == 12
    assert result.readback is not None
    assert result.readback.alarms == {AlarmCode.STALLED}
    assert result.readback.state is RunState.ALARM


@pytest.mark.asyncio
async def test_pause_stop_start_use_stp_and_run_faithfully(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """pause -> P; stop -> S (second STP); start -> infusing; pausing a stopped pump fails."""
    paused = await pump0.pause()
    assert (paused.outcome, sim.pumps[0].status) == (WriteOutcome.APPLIED, Status.PAUSED)
    stopped = await pump0.stop()
    assert (stopped.outcome, sim.pumps[0].status) == (WriteOutcome.APPLIED, Status.STOPPED)
    refused = await pump0.pause()
    assert refused.outcome is WriteOutcome.FAILED
    assert refused.detail == "not sent: pump is stopped"
    assert sim.pumps[0].status is Status.STOPPED
    started = await pump0.start()
    assert (started.outcome, sim.pumps[0].status) == (WriteOutcome.APPLIED, Status.INFUSING)


@pytest.mark.asyncio
async def test_start_without_rate_fails_with_not_applicable() -> None:
    """RUN with no rate programmed is ?NA: failed, pump still stopped."""
    simulator = NewEraSimulator([NewEraPumpSetup(reset_alarm=False)])
    async with simulator.serving("tcp://127.0.0.1:0"):
        driver = NewEraPumpDriver(simulator.url, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        result = await driver.start()
        await driver.close()
    assert result.outcome is WriteOutcome.FAILED
    assert "?NA" in result.detail
    assert simulator.pumps[0].status is Status.STOPPED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        (Fault.GARBLE, FrameError, "no valid reply"),
        (Fault.TRUNCATE, FrameError, "truncated"),
        (Fault.OVERLONG, FrameError, "longer than"),
        (Fault.WRONG_ADDRESS, FrameError, "reply from address 01, expected 00"),
        (Fault.SILENCE, DeviceTimeout, "no reply from pump 00"),
        (Fault.DROP_REPLY, DeviceTimeout, "no reply from pump 00"),
    ],
)
async def test_bad_replies_raise_clear_driver_errors(
    sim: NewEraSimulator,
    pump0: NewEraPumpDriver,
    fault: Fault,
    error: type[DriverError],
    match: str,
) -> None:
    """Garbage, truncated, overlong, wrong-address or missing replies: a specific DriverError."""
    sim.pumps[0].inject(fault)
    with pytest.raises(error, match=match):
        await pump0.read_status()
    sim.pumps[0].clear_faults()
    assert (await pump0.read_status()).rate_ml_h == 9  # and the link recovers


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [Fault.GARBLE, Fault.DROP_REPLY, Fault.WRONG_ADDRESS])
async def test_write_is_not_sent_when_the_pre_read_fails(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, fault: Fault
) -> None:
    """No valid answer to the pre-read: failed "not sent", and the pump never saw RAT."""
    sim.pumps[0].inject(fault)
    seen = sim.pumps[0].commands_seen
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: pre-read failed")
    assert sim.pumps[0].commands_seen == seen + 1  # the first query only
    assert sim.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize("action", ["set_rate", "start", "stop", "pause"])
async def test_link_dropping_after_the_write_is_uncertain(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, action: str
) -> None:
    """The pump executes the write and the line drops before any reply: no read-back can be
    taken, so the outcome is uncertain (never failed, never raised), nothing is re-sent."""
    pump = sim.pumps[0]
    if action == "start":
        pump.front_panel_stop()
    on = {"set_rate": "RAT", "start": "RUN", "stop": "STP", "pause": "STP"}[action]
    pump.inject(Fault.HANG_UP, count=1, on=on)
    call = {
        "set_rate": lambda: pump0.set_rate(Decimal(12)),
        "start": pump0.start,
        "stop": pump0.stop,
        "pause": pump0.pause,
    }[action]
    result = await call()
    assert result.outcome is WriteOutcome.UNCERTAIN, result.detail
    assert result.readback is None
    assert "read-back failed" in result.detail
    assert Fault.HANG_UP not in pump.faults  # the write reached the pump


@pytest.mark.asyncio
async def test_no_reply_and_an_unchanged_read_back_is_uncertain(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """RAT lost on the way (the pump never executes it, never answers): the pump did not say
    no, so the write is uncertain, with the read-back (rate unchanged) attached."""
    sim.pumps[0].inject(Fault.SILENCE, count=1, on="RAT")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.UNCERTAIN
    assert "no valid reply" in result.detail
    assert "unchanged" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 9


@pytest.mark.asyncio
async def test_lost_reply_with_matching_read_back_is_applied(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """When only the write's reply is lost, the read-back proves the rate: applied, and said so."""
    sim.pumps[0].inject(Fault.GARBLE, count=1, on="RAT")
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert "reply lost" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 12


@pytest.mark.asyncio
async def test_slow_reply_within_the_timeout_is_accepted(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """A reply delayed below the timeout is fine; beyond it, DeviceTimeout."""
    pump = sim.pumps[0]
    pump.reply_delay_s = FAST_TIMEOUT_S / 3
    pump.inject(Fault.SLOW, count=1)
    assert (await pump0.read_status()).rate_ml_h == 9
    pump.reply_delay_s = FAST_TIMEOUT_S * 2
    pump.inject(Fault.SLOW, count=1)
    with pytest.raises(DeviceTimeout):
        await pump0.read_status()


@pytest.mark.asyncio
async def test_silent_pump_goes_offline_then_online_again(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """Three failed transactions mark the pump offline; the next answer brings it online."""
    sim.pumps[0].inject(Fault.SILENCE)
    for _ in range(3):
        with pytest.raises(DeviceTimeout):
            await pump0.read_status()
    assert pump0.connection is ConnectionState.OFFLINE
    sim.pumps[0].clear_faults()
    await pump0.read_status()
    assert pump0.connection is ConnectionState.ONLINE


@pytest.mark.asyncio
async def test_two_pumps_on_one_port_are_serialised_and_kept_apart(
    sim: NewEraSimulator,
) -> None:
    """Concurrent writes to addresses 0 and 1 share one port and reach the right pump each."""
    a = NewEraPumpDriver(sim.url, 0, timeout_s=FAST_TIMEOUT_S)
    b = NewEraPumpDriver(sim.url, 1, timeout_s=FAST_TIMEOUT_S)
    await a.connect()
    await b.connect()
    try:
        assert a._line is b._line  # one transport, one lock
        results = await asyncio.gather(
            *(d.set_rate(Decimal(r)) for d, r in ((a, "7.5"), (b, "3.25")) for _ in range(3))
        )
        assert all(r.outcome is WriteOutcome.APPLIED for r in results)
        assert sim.pumps[0].rate_ml_h == Decimal("7.5")
        assert sim.pumps[1].rate_ml_h == Decimal("3.25")
        sim.pumps[1].inject(Fault.WRONG_ADDRESS)  # pump 1 answers as if it were 2
        with pytest.raises(FrameError, match="reply from address 02, expected 01"):
            await b.read_status()
        assert (await a.read_status()).rate_ml_h == Decimal("7.5")
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_safe_mode_keeps_pumping_while_polled_and_stops_when_silent(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """SAF2: polls in CRC packets keep the pump running; silence stops it with A?T."""
    pump = sim.pumps[0]
    await pump0.configure_watchdog(2)
    assert pump0.safe_mode
    assert pump.safe_timeout_s == 2
    start = sim.now()
    while sim.now() < start + 5:  # 5 simulated seconds of back-to-back polls (speed 10)
        status = await pump0.read_status()
        assert status.state is RunState.INFUSING
    await sim.wait_until(lambda: pump.status is Status.STOPPED, within_s=2.0)
    assert sim.now() - start >= 5 + 2 - 0.5
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {AlarmCode.COMM_TIMEOUT}
    await pump0.configure_watchdog(0)
    assert not pump0.safe_mode
    assert pump.safe_timeout_s == 0


@pytest.mark.asyncio
async def test_driver_finds_a_pump_left_in_safe_mode(sim: NewEraSimulator) -> None:
    """A pump still in safe mode from an earlier run is detected at connect and spoken to."""
    sim.pumps[1].safe_timeout_s = 60
    driver = NewEraPumpDriver(sim.url, 1, timeout_s=FAST_TIMEOUT_S)
    await driver.connect()
    try:
        assert driver.safe_mode
        assert (await driver.set_rate(Decimal(4))).outcome is WriteOutcome.APPLIED
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_reconnects_with_backoff_after_the_link_drops() -> None:
    """The simulator going away marks the link offline; when it returns, the driver reconnects."""
    setup = [NewEraPumpSetup(rate_ml_h=Decimal(9), running=True, reset_alarm=False)]
    first = NewEraSimulator(setup)
    async with first.serving("tcp://127.0.0.1:0"):
        port = NewEraPort(
            first.url, timeout_s=FAST_TIMEOUT_S, backoff=Backoff(initial_s=0.01, maximum_s=0.02)
        )
        driver = NewEraPumpDriver(first.url, port=port, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        assert (await driver.read_status()).rate_ml_h == 9
    with pytest.raises(DriverError):
        await driver.read_status()
    assert driver.connection is ConnectionState.OFFLINE
    second = NewEraSimulator(setup)
    async with second.serving(f"tcp://127.0.0.1:{first.port}"):
        loop_deadline = 50
        for _ in range(loop_deadline):  # each attempt is refused only while backing off
            try:
                status = await driver.read_status()
                break
            except DriverError:
                await port.backoff_elapsed()
        else:
            pytest.fail("driver did not reconnect")
        assert status.rate_ml_h == 9
        assert driver.connection is ConnectionState.ONLINE
        await driver.close()


@pytest.mark.asyncio
async def test_late_reply_is_not_taken_as_the_next_answer(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """A reply arriving just after the timeout is flushed, not read as the next query's answer."""
    pump = sim.pumps[0]
    pump.reply_delay_s = FAST_TIMEOUT_S + 0.01
    pump.inject(Fault.SLOW, count=1)
    with pytest.raises(DeviceTimeout):
        await pump0.read_status()  # the stale reply says 9.000MH
    pump.front_panel_rate(Decimal(12))
    assert (await pump0.read_status()).rate_ml_h == 12


@pytest.mark.asyncio
async def test_tcp_and_socket_urls_share_one_port(sim: NewEraSimulator) -> None:
    """tcp://host:port is accepted and is the same line as socket://host:port."""
    a = NewEraPumpDriver(sim.url, 0, timeout_s=FAST_TIMEOUT_S)
    b = NewEraPumpDriver(sim.url.replace("socket://", "tcp://"), 1, timeout_s=FAST_TIMEOUT_S)
    await a.connect()
    await b.connect()
    try:
        assert a._line is b._line
        assert (await b.read_status()).rate_ml_h == 2
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", ["-1", "NaN", "1e9"])
async def test_unwritable_rates_are_refused_before_anything_is_sent(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, rate: str
) -> None:
    """A rate the 4-digit format cannot carry: failed "not sent", and the pump sees nothing."""
    seen = sim.pumps[0].commands_seen
    result = await pump0.set_rate(Decimal(rate))
    assert result.outcome is WriteOutcome.FAILED
    assert result.readback is None
    assert re.fullmatch(
        r"not sent: rate \S+ mL/h cannot be written in any New Era unit", result.detail
    )
    assert sim.pumps[0].commands_seen == seen


@pytest.mark.asyncio
async def test_unreachable_port_is_offline_and_backs_off() -> None:
    """Nothing listening: connect raises PortUnavailable naming the URL; retries back off."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"socket://127.0.0.1:{closed.getsockname()[1]}"
        driver = NewEraPumpDriver(url, 0, timeout_s=FAST_TIMEOUT_S)
        with pytest.raises(PortUnavailable, match=re.escape(f"cannot open {url}")):
            await driver.connect()
        assert driver.connection is ConnectionState.OFFLINE
        with pytest.raises(PortUnavailable, match="next reconnect attempt in"):
            await driver.read_status()
    bad = NewEraPumpDriver("nonsense://x", 0)
    with pytest.raises(PortUnavailable, match="cannot open nonsense://x"):
        await bad.connect()
    await driver.close()
    await bad.close()


@pytest.mark.asyncio
async def test_watchdog_configured_before_connect_is_applied_at_connect(
    sim: NewEraSimulator,
) -> None:
    """configure_watchdog before connect is remembered; out-of-range values are refused."""
    driver = NewEraPumpDriver(sim.url, 1, timeout_s=FAST_TIMEOUT_S)
    with pytest.raises(DriverError, match=r"0\.\.255 s, got 300"):
        await driver.configure_watchdog(300)
    await driver.configure_watchdog(30)
    await driver.connect()
    try:
        assert driver.safe_mode
        assert sim.pumps[1].safe_timeout_s == 30
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_withdrawing_pump_is_flagged_and_start_turns_it_forward(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """Running in reverse (W) is not infusing: alarm state with 'withdrawing'; start sets INF."""
    pump = sim.pumps[0]
    pump.direction = "WDR"
    pump.front_panel_run()
    status = await pump0.read_status()
    assert status.state is RunState.ALARM
    assert status.alarms == {AlarmCode.WITHDRAWING}
    result = await pump0.start()
    assert result.outcome is WriteOutcome.APPLIED
    assert (pump.direction, pump.status) == ("INF", Status.INFUSING)


WRITES = ["set_rate", "start", "stop", "pause", "acknowledge_alarms"]


def write_call(driver: NewEraPumpDriver, action: str) -> Coroutine[Any, Any, WriteResult]:
    if action == "set_rate":
        return driver.set_rate(Decimal(12))
    method: Callable[[], Coroutine[Any, Any, WriteResult]] = getattr(driver, action)
    return method()


@pytest.mark.asyncio
@pytest.mark.parametrize("action", WRITES)
async def test_writes_on_a_dead_link_fail_as_not_sent_and_never_raise(action: str) -> None:
    """The pump's line is gone (simulator closed): every write returns failed "not sent: ..."
    instead of raising, and says why; nothing reached a pump."""
    simulator = NewEraSimulator(
        [NewEraPumpSetup(rate_ml_h=Decimal(9), running=True, reset_alarm=False)]
    )
    async with simulator.serving("tcp://127.0.0.1:0"):
        port = NewEraPort(
            simulator.url, timeout_s=FAST_TIMEOUT_S, backoff=Backoff(initial_s=5, maximum_s=5)
        )
        driver = NewEraPumpDriver(simulator.url, port=port, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        seen = simulator.pumps[0].commands_seen
    try:
        with contextlib.suppress(DriverError):
            await driver.read_status()  # notices the dropped line
        result = await write_call(driver, action)
    finally:
        await driver.close()
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: "), result.detail
    assert "offline" in result.detail or "closed" in result.detail
    assert simulator.pumps[0].commands_seen == seen
    assert simulator.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize("action", WRITES)
async def test_writes_before_connect_fail_as_not_sent(sim: NewEraSimulator, action: str) -> None:
    """A driver that was never connected answers every write failed "not sent" (no assert,
    no exception), and the pump sees nothing."""
    driver = NewEraPumpDriver(sim.url, 0, timeout_s=FAST_TIMEOUT_S)
    seen = sim.pumps[0].commands_seen
    result = await write_call(driver, action)
    assert result.outcome is WriteOutcome.FAILED
    assert "not sent: " in result.detail
    assert "not connected" in result.detail
    assert sim.pumps[0].commands_seen == seen


@pytest.mark.asyncio
async def test_pause_of_a_silent_pump_is_failed_not_sent(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """The reported case: pause while the pump does not answer returned a DriverError; now
    the pre-read fails, nothing is written, and pause says so in its result."""
    sim.pumps[0].inject(Fault.SILENCE)
    result = await pump0.pause()
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: pre-read failed: no reply from pump 00")
    sim.pumps[0].clear_faults()
    assert sim.pumps[0].status is Status.INFUSING


def _snap(rate: str, device: RunState) -> Snapshot:
    return Snapshot(PumpStatus(state=device, rate_ml_h=Decimal(rate)), device)


@pytest.mark.parametrize(
    ("answer", "after", "outcome"),
    [
        (Answer.ACCEPTED, _snap("12", RunState.INFUSING), WriteOutcome.APPLIED),
        (Answer.REFUSED, _snap("12", RunState.INFUSING), WriteOutcome.APPLIED),
        (Answer.LOST, _snap("12", RunState.INFUSING), WriteOutcome.APPLIED),
        (Answer.REFUSED, _snap("9", RunState.INFUSING), WriteOutcome.FAILED),
        (Answer.REFUSED, _snap("9", RunState.PAUSED), WriteOutcome.UNCERTAIN),
        (Answer.REFUSED, _snap("10", RunState.INFUSING), WriteOutcome.UNCERTAIN),
        (Answer.LOST, _snap("9", RunState.INFUSING), WriteOutcome.UNCERTAIN),
        (Answer.ACCEPTED, _snap("9", RunState.INFUSING), WriteOutcome.UNCERTAIN),
    ],
)
def test_the_read_back_decides_the_outcome_of_a_rate_write(
    answer: Answer, after: Snapshot, outcome: WriteOutcome
) -> None:
    """Decision table of a write of 12 mL/h to a pump infusing 9: the read-back showing 12 is
    applied whatever the answer; failed needs a refusal *and* rate and state unchanged; any
    other read-back (paused, another rate, no answer, accepted but unchanged) is uncertain."""
    before = _snap("9", RunState.INFUSING)
    sent = Sent(sent=True, answer=answer, detail="pump said so")
    result = judge(before, after, sent, lambda s: s.status.rate_ml_h == 12, "rate 12 mL/h")
    assert result.outcome is outcome, result.detail
    assert result.readback == after.status


@pytest.mark.asyncio
async def test_the_before_write_hook_can_stop_a_write_after_the_pre_read(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """The gateway's hook runs after the pre-read, with what it showed, before RAT goes out:
    when it answers False the rate is not sent (``failed``, "not sent") and the pump keeps its
    rate; when True the write goes out and is applied."""
    shown: list[PumpStatus] = []

    async def refuse(before: PumpStatus) -> bool:
        shown.append(before)
        return False

    async def allow(_before: PumpStatus) -> bool:
        return True

    pump0.before_write = refuse
    result = await pump0.set_rate(Decimal(12))
    assert [s.rate_ml_h for s in shown] == [9]  # the pre-read, handed to the hook
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: ")
    assert sim.pumps[0].rate_ml_h == 9
    pump0.before_write = allow
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is WriteOutcome.APPLIED
    assert sim.pumps[0].rate_ml_h == 12
