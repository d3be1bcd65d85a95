"""ModbusPumpDriver against the real simulator over Modbus TCP: reads and confirmed writes."""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest

from drivers.base import AlarmCode, ConnectionState, RunState, WriteOutcome
from drivers.errors import DriverError
from drivers.modbus import parse_profile
from drivers.modbus.regmap import PROFILES_DIR
from tests.modbus.conftest import Rig


@pytest.mark.asyncio
async def test_status_identity_and_capabilities_come_from_the_device(rig: Rig) -> None:
    """The poll decodes the documented map; capabilities use the device's max_rate."""
    status = await rig.driver.read_status()
    assert status.state is RunState.INFUSING
    assert status.rate_ml_h == Decimal("52.50")
    assert status.alarms == frozenset()
    assert status.battery_pct == 100
    assert status.vtbi_ml is not None
    assert status.vtbi_ml <= 250
    ident = await rig.driver.identity()
    assert (ident.model, ident.serial, ident.firmware) == ("SIM-GP1", "SN0001", "103")
    caps = rig.driver.capabilities
    assert caps.max_rate_ml_h == Decimal("999.99")
    assert caps.resolution_ml_h == Decimal("0.01")
    assert caps.supports_watchdog
    assert rig.driver.connection is ConnectionState.ONLINE


@pytest.mark.asyncio
async def test_poll_reads_the_status_block_in_one_request(rig: Rig) -> None:
    """generic-pump-v1's status registers 0-11 and 24-25 are read with a single FC3."""
    assert len(rig.driver.status_plan) == 1
    span = rig.driver.status_plan[0]
    assert (span.address, span.count) == (0, 26)


@pytest.mark.asyncio
async def test_set_rate_is_applied_and_the_pump_delivers_it(rig: Rig) -> None:
    """A rate within the device range is confirmed by executed_seq and read back."""
    result = await rig.driver.set_rate(Decimal("63.00"))
    assert result.outcome is WriteOutcome.APPLIED
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal("63.00")
    pump = rig.sim.pump(1)
    assert pump.delivered_rate_ml_h == Decimal("63.00")
    assert pump.executed_seq == pump.command_seq != 0


@pytest.mark.asyncio
async def test_rate_above_device_max_fails_and_is_verified_unchanged(rig: Rig) -> None:
    """last_result 1 (out of device range) -> failed, and the read-back shows the old rate."""
    result = await rig.driver.set_rate(Decimal(1500))
    assert result.outcome is WriteOutcome.FAILED
    assert result.extra["reason"] == "out_of_range"
    assert result.readback is not None
    assert result.readback.rate_ml_h == Decimal("52.50")
    assert rig.sim.pump(1).rate == Decimal("52.5")


@pytest.mark.asyncio
async def test_rate_outside_the_map_range_is_refused_before_sending(rig: Rig) -> None:
    """A value the map cannot encode is ``failed`` "not sent", naming the register and the
    limit; nothing is sent (not even the pre-read)."""
    requests = len(rig.sim.requests)
    too_big = await rig.driver.set_rate(Decimal("12345.67"))
    assert too_big.outcome is WriteOutcome.FAILED
    assert too_big.detail.startswith("not sent: apply_rate (rate 12345.67 mL/h): ")
    assert "rate_setpoint (holding register 20-21)" in too_big.detail
    too_fine = await rig.driver.set_rate(Decimal("1.005"))
    assert too_fine.outcome is WriteOutcome.FAILED
    assert too_fine.detail.startswith("not sent: ")
    assert "multiple of the resolution 0.01" in too_fine.detail
    for bad, why in [
        ("NaN", "is not a finite number"),
        ("sNaN", "is not a finite number"),
        ("-Infinity", "is not a finite number"),
        ("1E+999999", "does not fit a u32"),
        ("-0.01", "does not fit a u32"),
    ]:
        result = await rig.driver.set_rate(Decimal(bad))
        assert result.outcome is WriteOutcome.FAILED
        assert result.detail.startswith("not sent: ")
        assert f"rate_setpoint (holding register 20-21): value {bad} {why}" in result.detail
    assert len(rig.sim.requests) == requests


@pytest.mark.asyncio
async def test_stop_pause_start_follow_the_state_rules(rig: Rig) -> None:
    """Pause while stopped is not allowed (failed, unchanged); stop and start are applied."""
    assert (await rig.driver.stop()).outcome is WriteOutcome.APPLIED
    assert rig.sim.pump(1).state == "stopped"
    paused = await rig.driver.pause()
    assert paused.outcome is WriteOutcome.FAILED
    assert paused.extra["reason"] == "not_allowed"
    started = await rig.driver.start()
    assert started.outcome is WriteOutcome.APPLIED
    assert started.readback is not None
    assert started.readback.state is RunState.INFUSING
    assert (await rig.driver.pause()).outcome is WriteOutcome.APPLIED
    assert rig.sim.pump(1).delivered_rate_ml_h == 0


@pytest.mark.asyncio
async def test_start_while_in_alarm_is_not_allowed_until_acknowledged(rig: Rig) -> None:
    """An occlusion stops the pump; start fails until the cause is gone and acknowledged."""
    rig.sim.inject("occlusion", unit=1)
    status = await rig.driver.read_status()
    assert status.state is RunState.ALARM
    assert AlarmCode.OCCLUSION in status.alarms
    assert (await rig.driver.start()).outcome is WriteOutcome.FAILED
    rig.sim.clear("occlusion", unit=1)
    assert (await rig.driver.acknowledge_alarms()).outcome is WriteOutcome.APPLIED
    assert (await rig.driver.start()).outcome is WriteOutcome.APPLIED


@pytest.mark.asyncio
async def test_clear_volume_is_refused_while_infusing(rig: Rig) -> None:
    """Command 4 is not allowed while infusing and resets volume once stopped."""
    assert (await rig.driver.clear_volume()).outcome is WriteOutcome.FAILED
    await rig.driver.stop()
    result = await rig.driver.clear_volume()
    assert result.outcome is WriteOutcome.APPLIED
    assert result.readback is not None
    assert result.readback.volume_infused_ml == 0


@pytest.mark.asyncio
async def test_silent_pump_gets_nothing_sent_and_the_command_fails_not_sent(rig: Rig) -> None:
    """A pump silent at the pre-read: the write is never sent, the outcome is ``failed``
    with a detail starting "not sent:" and the reason, and the link is offline."""
    await rig.driver.read_status()
    pump = rig.sim.pump(1)
    writes_before = pump.writes
    rig.sim.inject("no_answer", unit=1)
    result = await rig.driver.set_rate(Decimal(60))  # the pre-read gets no answer
    assert result.outcome is WriteOutcome.FAILED
    assert result.detail.startswith("not sent: ")
    assert "no answer within" in result.detail
    assert pump.writes == writes_before
    assert rig.driver.connection is ConnectionState.OFFLINE


@pytest.mark.asyncio
async def test_watchdog_is_configured_fed_by_polls_and_fires_without_them(rig: Rig) -> None:
    """configure_watchdog writes register 11; polling keeps it fed; silence trips it."""
    await rig.driver.configure_watchdog(1)
    assert rig.sim.pump(1).comm_timeout_s == 1
    with pytest.raises(DriverError, match="comm_timeout_s"):
        await rig.driver.configure_watchdog(99999)
    pump = rig.sim.pump(1)
    pump.last_feed_real -= 5  # as if nobody had written for 5 s (mocked time, not a sleep)
    status = await rig.driver.read_status()
    assert status.state is RunState.ALARM
    assert AlarmCode.COMM_TIMEOUT in status.alarms


@pytest.mark.asyncio
async def test_polls_feed_the_watchdog(rig: Rig) -> None:
    """With the watchdog armed, read_status writes the no-op command before it expires."""
    clock = [0.0]
    driver = rig.make_driver(1, clock=lambda: clock[0])
    await driver.connect()
    try:
        await driver.configure_watchdog(3)
        feeds = rig.sim.pump(1).writes
        clock[0] += 1.5  # more than a third of the timeout later
        await driver.read_status()
        assert rig.sim.pump(1).writes == feeds + 1
        assert rig.sim.pump(1).state == "infusing"
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_lost_answer_to_a_write_is_uncertain_and_reconciled_by_the_next_poll(
    rig: Rig,
) -> None:
    """The pump executes the write but its answer is lost: outcome uncertain, the write went
    out exactly once (no blind resend), and the next poll shows what really happened."""
    pump = rig.sim.pump(1)
    writes = pump.writes
    rig.sim.inject("lost_answer", unit=1)
    result = await rig.driver.set_rate(Decimal("58.00"))
    assert result.outcome is WriteOutcome.UNCERTAIN
    assert "not resent" in result.detail
    assert pump.writes == writes + 1
    rig.sim.clear("lost_answer", unit=1)
    assert (await rig.driver.read_status()).rate_ml_h == Decimal("58.00")


@pytest.mark.asyncio
async def test_write_refused_with_an_exception_is_failed_and_verified_unchanged(
    rig: Rig,
) -> None:
    """A device answering exception 3 to the command write -> failed, read back unchanged.
    (The driver's map here claims pause = 9, a code this pump does not know.)"""
    data = tomllib.loads((PROFILES_DIR / "generic-pump-v1.toml").read_text())
    data["commands"]["pause"] = 9
    data["registers"]["command"]["max"] = 9
    driver = rig.make_driver(1, profile=parse_profile(data))
    await driver.connect()
    try:
        result = await driver.pause()
        assert result.outcome is WriteOutcome.FAILED
        assert "exception response 3 (ILLEGAL_VALUE)" in result.detail
        assert result.readback is not None
        assert result.readback.state is RunState.INFUSING
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_stop_of_a_pump_in_alarm_is_applied(rig: Rig) -> None:
    """Stop on an alarmed pump is accepted: it stays in alarm and delivers nothing."""
    rig.sim.inject("empty", unit=1)
    result = await rig.driver.stop()
    assert result.outcome is WriteOutcome.APPLIED
    assert rig.sim.pump(1).delivered_rate_ml_h == 0


@pytest.mark.asyncio
async def test_watchdog_is_re_armed_after_a_power_reset(rig: Rig) -> None:
    """A pump that rebooted (register 11 back to 0) gets its watchdog back on the next poll."""
    await rig.driver.configure_watchdog(30)
    rig.sim.inject("power_reset", unit=1)
    assert rig.sim.pump(1).comm_timeout_s == 0
    await rig.driver.read_status()
    assert rig.sim.pump(1).comm_timeout_s == 30


@pytest.mark.asyncio
async def test_max_rate_is_read_once_the_pump_answers(rig: Rig) -> None:
    """If connect() could not read identity, the first successful poll fills capabilities."""
    rig.sim.inject("no_answer", unit=2)
    driver = rig.make_driver(2)
    with pytest.raises(DriverError):
        await driver.connect()
    try:
        assert driver.capabilities.max_rate_ml_h == Decimal("9999.99")  # the map's limit
        rig.sim.clear("no_answer", unit=2)
        await driver.read_status()
        assert driver.capabilities.max_rate_ml_h == Decimal("999.99")  # the device's
    finally:
        await driver.close()
