"""A second vendor's map is a TOML file only: the same driver and simulator code serve it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.base import AlarmCode, RunState, WriteOutcome
from drivers.modbus import BusRegistry, ModbusPumpDriver, Table, WordOrder, load_profile
from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import demo_pump

ACME = Path(__file__).parent / "profiles" / "acme-syringe-v3.toml"


@pytest.mark.asyncio
async def test_driver_runs_a_pump_with_another_vendors_map() -> None:
    """Input-register status, low-word-first u32, 0.1 mL/h scale, other codes: all from TOML."""
    acme = load_profile(ACME)
    assert acme.word_order is WordOrder.LITTLE
    assert acme["status"].table is Table.INPUT
    cfg = demo_pump(1, max_rate_ml_h=Decimal("999.9"), model="ACME-S3")
    sim = ModbusPumpSimulator([cfg], profile=acme)
    async with sim.serving("tcp://127.0.0.1:0") as served:
        driver = ModbusPumpDriver(served.url, 1, profile=ACME, registry=BusRegistry())
        await driver.connect()
        try:
            assert (await driver.identity()).model == "ACME-S3"
            caps = driver.capabilities
            assert caps.resolution_ml_h == Decimal("0.1")
            assert caps.max_rate_ml_h == Decimal("999.9")
            status = await driver.read_status()
            assert status.state is RunState.INFUSING
            assert status.rate_ml_h == Decimal("52.5")
            assert {s.table for s in driver.status_plan} == {Table.INPUT, Table.HOLDING}

            applied = await driver.set_rate(Decimal("63.5"))
            assert applied.outcome is WriteOutcome.APPLIED
            assert sim.pump(1).rate == Decimal("63.5")
            refused = await driver.set_rate(Decimal(1100))
            assert refused.outcome is WriteOutcome.FAILED
            assert refused.extra["reason"] == "out_of_range"
            too_fine = await driver.set_rate(Decimal("63.55"))
            assert too_fine.outcome is WriteOutcome.FAILED
            assert too_fine.detail.startswith("not sent: ")
            assert "resolution 0.1" in too_fine.detail

            sim.inject("door_open", unit=1)
            status = await driver.read_status()
            assert status.state is RunState.ALARM
            assert status.alarms == {AlarmCode.DOOR_OPEN}
            assert (await driver.start()).extra["reason"] == "not_allowed"
        finally:
            await driver.close()


@pytest.mark.asyncio
async def test_second_map_is_on_the_wire_as_declared() -> None:
    """A plain pymodbus client sees rate 52.5 as 525 low word first in input registers 104-105."""
    sim = ModbusPumpSimulator([demo_pump(1)], profile=load_profile(ACME))
    async with sim.serving("tcp://127.0.0.1:0") as served:
        port = int(served.url.rsplit(":", 1)[1])
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        await client.connect()
        try:
            rr = await client.read_input_registers(100, count=3, device_id=1)
            assert rr.registers == [3, 2, 0]  # map_version 3, status 2 = infusing
            rr = await client.read_input_registers(104, count=2, device_id=1)
            assert rr.registers == [525, 0]
        finally:
            client.close()
