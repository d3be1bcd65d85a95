"""Fixtures: the New Era simulator served in the test's event loop, and drivers on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest_asyncio

from drivers.newera import NewEraPumpDriver
from sim_devices.newera_server import NewEraPumpSetup, NewEraSimulator

FAST_TIMEOUT_S = 0.25


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[NewEraSimulator]:
    """Two pumps (addresses 0 and 1) on one TCP port; pump 0 infusing 9.0 mL/h."""
    simulator = NewEraSimulator(
        [
            NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True, reset_alarm=False),
            NewEraPumpSetup(address=1, rate_ml_h=Decimal("2.0"), reset_alarm=False),
        ],
        speed=10.0,
    )
    async with simulator.serving("tcp://127.0.0.1:0"):
        yield simulator


@pytest_asyncio.fixture
async def pump0(sim: NewEraSimulator) -> AsyncIterator[NewEraPumpDriver]:
    """A connected driver for pump 0 with a short reply timeout."""
    driver = NewEraPumpDriver(sim.url, 0, timeout_s=FAST_TIMEOUT_S)
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()
