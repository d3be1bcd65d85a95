"""Fixtures: the PHD ULTRA chain simulator served in the test's event loop, drivers on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest_asyncio

from drivers.phd import PhdPumpDriver
from sim_devices.phd_server import PhdPumpSetup, PhdSimulator

FAST_TIMEOUT_S = 0.25
DIAMETER = Decimal("26.59")


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[PhdSimulator]:
    """Pumps 0 (infusing 9 mL/h) and 12 (stopped, 2 mL/h) on one chain behind TCP."""
    simulator = PhdSimulator(
        [
            PhdPumpSetup(address=0, rate_ml_h=Decimal(9), running=True),
            PhdPumpSetup(address=12, rate_ml_h=Decimal(2)),
        ],
        speed=10.0,
    )
    async with simulator.serving("tcp://127.0.0.1:0"):
        yield simulator


@pytest_asyncio.fixture
async def pump0(sim: PhdSimulator) -> AsyncIterator[PhdPumpDriver]:
    """A connected driver for pump 0 with a short reply timeout."""
    driver = PhdPumpDriver(sim.url, 0, diameter_mm=DIAMETER, timeout_s=FAST_TIMEOUT_S)
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()
