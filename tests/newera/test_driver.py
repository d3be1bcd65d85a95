"""NewEraPumpDriver against the simulator over TCP: outcomes, alarms, errors, modes, chains."""

from __future__ import annotations

import asyncio
import re
import socket
from decimal import Decimal

import pytest

from drivers.backoff import Backoff
from drivers.base import AlarmCode, ConnectionState, Outcome, RunState
from drivers.errors import DeviceTimeout, DriverError, FrameError
from drivers.newera import NewEraPort, NewEraPumpDriver
from drivers.newera.errors import NotRepresentable, PortUnavailable
from drivers.newera.frames import Alarm, Status
from sim_devices.newera_pump import Fault
from sim_devices.newera_server import NewEraSimulator, PumpSetup
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
    assert result.outcome is Outcome.APPLIED
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal("52.5")
    assert sim.pumps[0].delivering_ml_h == Decimal("52.5")


@pytest.mark.asyncio
async def test_out_of_range_rate_fails_and_is_verified_unchanged(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """?OOR -> failed, with a read-back showing the old rate."""
    result = await pump0.set_rate(Decimal(5000))
    assert result.outcome is Outcome.FAILED
    assert "?OOR" in result.detail
    assert "out of range" in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal(9)
    assert sim.pumps[0].rate_ml_h == 9


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("?", "not recognised"),
        ("?NA", "not applicable"),
        ("?OOR", "out of range"),
        ("?COM", "invalid communications packet"),
        ("?IGN", "ignored"),
    ],
)
async def test_every_device_error_fails_the_write_with_its_meaning(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, code: str, meaning: str
) -> None:
    """Each error reply is a DeviceRejected naming its meaning; the rate stays as read back."""
    sim.pumps[0].reject_with = code
    sim.pumps[0].inject(Fault.REJECT, count=1)
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is Outcome.FAILED
    assert meaning in result.detail
    assert result.readback is not None
    assert result.readback.rate_ml_h == 9
    assert sim.pumps[0].rate_ml_h == 9


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
    assert ack.outcome is Outcome.APPLIED
    assert ack.readback is not None
    assert ack.readback.alarms == frozenset()
    assert ack.readback.state is RunState.STOPPED


@pytest.mark.asyncio
async def test_power_on_reset_alarm_is_seen_at_connect() -> None:
    """A freshly powered pump's A?R is latched by the driver at connect."""
    simulator = NewEraSimulator([PumpSetup(address=3)])
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
async def test_write_answered_by_an_alarm_fails_without_resend(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """A stall reported in reply to RAT means RAT was not executed: failed, never re-sent."""
    sim.pumps[0].raise_alarm(Alarm.STALLED)
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is Outcome.FAILED
    assert "stalled" in result.detail
    assert sim.pumps[0].rate_ml_h == 9
    assert result.readback is not None
    assert result.readback.alarms == {AlarmCode.STALLED}


@pytest.mark.asyncio
async def test_pause_stop_start_use_stp_and_run_faithfully(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """pause -> P; stop -> S (second STP); start -> infusing; pausing a stopped pump fails."""
    paused = await pump0.pause()
    assert (paused.outcome, sim.pumps[0].status) == (Outcome.APPLIED, Status.PAUSED)
    stopped = await pump0.stop()
    assert (stopped.outcome, sim.pumps[0].status) == (Outcome.APPLIED, Status.STOPPED)
    refused = await pump0.pause()
    assert refused.outcome is Outcome.FAILED
    assert sim.pumps[0].status is Status.STOPPED
    started = await pump0.start()
    assert (started.outcome, sim.pumps[0].status) == (Outcome.APPLIED, Status.INFUSING)


@pytest.mark.asyncio
async def test_start_without_rate_fails_with_not_applicable() -> None:
    """RUN with no rate programmed is ?NA: failed, pump still stopped."""
    simulator = NewEraSimulator([PumpSetup(reset_alarm=False)])
    async with simulator.serving("tcp://127.0.0.1:0"):
        driver = NewEraPumpDriver(simulator.url, timeout_s=FAST_TIMEOUT_S)
        await driver.connect()
        result = await driver.start()
        await driver.close()
    assert result.outcome is Outcome.FAILED
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
async def test_rate_is_never_assumed_changed_without_read_back(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, fault: Fault
) -> None:
    """No valid answer to RAT nor to the read-back: uncertain, no read-back, nothing re-sent."""
    sim.pumps[0].inject(fault)
    seen = sim.pumps[0].commands_seen
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is Outcome.UNCERTAIN
    assert result.readback is None
    assert "read-back failed" in result.detail
    assert sim.pumps[0].commands_seen == seen + 2  # RAT once, then one read-back attempt


@pytest.mark.asyncio
async def test_lost_reply_with_matching_read_back_is_applied(
    sim: NewEraSimulator, pump0: NewEraPumpDriver
) -> None:
    """When only the write's reply is lost, the read-back proves the rate: applied, and said so."""
    sim.pumps[0].inject(Fault.GARBLE, count=1)
    result = await pump0.set_rate(Decimal(12))
    assert result.outcome is Outcome.APPLIED
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
        assert a._port is b._port  # one transport, one lock
        results = await asyncio.gather(
            *(d.set_rate(Decimal(r)) for d, r in ((a, "7.5"), (b, "3.25")) for _ in range(3))
        )
        assert all(r.outcome is Outcome.APPLIED for r in results)
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
        assert (await driver.set_rate(Decimal(4))).outcome is Outcome.APPLIED
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_reconnects_with_backoff_after_the_link_drops() -> None:
    """The simulator going away marks the link offline; when it returns, the driver reconnects."""
    setup = [PumpSetup(rate_ml_h=Decimal(9), running=True, reset_alarm=False)]
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
        assert a._port is b._port
        assert (await b.read_status()).rate_ml_h == 2
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", ["-1", "NaN", "1e9"])
async def test_unwritable_rates_are_refused_before_anything_is_sent(
    sim: NewEraSimulator, pump0: NewEraPumpDriver, rate: str
) -> None:
    """A rate the 4-digit format cannot carry raises NotRepresentable; the pump sees nothing."""
    seen = sim.pumps[0].commands_seen
    with pytest.raises(NotRepresentable, match="cannot be written"):
        await pump0.set_rate(Decimal(rate))
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
    assert result.outcome is Outcome.APPLIED
    assert (pump.direction, pump.status) == ("INF", Status.INFUSING)
