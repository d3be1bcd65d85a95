"""Fixtures for the Modbus tests: the real simulator (pymodbus server) and real drivers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest_asyncio

from drivers.backoff import Backoff
from drivers.modbus import BusRegistry, ModbusPumpDriver
from sim_devices.modbus_pump import ModbusPumpSetup
from sim_devices.modbus_server import ModbusPumpSimulator, Served

FAST_TIMEOUT_S = 0.3


@dataclass
class Rig:
    """A simulator served on loopback TCP and a driver connected to unit 1."""

    sim: ModbusPumpSimulator
    served: Served
    driver: ModbusPumpDriver
    registry: BusRegistry

    def make_driver(self, unit: int = 1, **kwargs: object) -> ModbusPumpDriver:
        return ModbusPumpDriver(
            self.served.url,
            unit,
            registry=self.registry,
            timeout_s=FAST_TIMEOUT_S,
            **kwargs,  # type: ignore[arg-type]
        )


def demo_pump(unit: int = 1, **overrides: object) -> ModbusPumpSetup:
    """The demo's pump-1: norepinephrine infusing 52.5 mL/h."""
    cfg = ModbusPumpSetup(
        unit_id=unit,
        status="infusing",
        rate_ml_h=Decimal("52.5"),
        vtbi_ml=Decimal(250),
        max_rate_ml_h=Decimal("999.99"),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.05, maximum_s=0.2, rng=lambda: 0.0)


@contextlib.asynccontextmanager
async def serve_rig(
    sim: ModbusPumpSimulator, clock: Callable[[], float] | None = None
) -> AsyncIterator[Rig]:
    """Serve ``sim`` on a free loopback port and connect a driver to unit 1."""
    registry = BusRegistry()
    async with sim.serving("tcp://127.0.0.1:0") as served:
        extra = {"clock": clock} if clock is not None else {}
        driver = ModbusPumpDriver(
            served.url,
            1,
            registry=registry,
            timeout_s=FAST_TIMEOUT_S,
            backoff=fast_backoff(),
            **extra,  # type: ignore[arg-type]
        )
        await driver.connect()
        try:
            yield Rig(sim, served, driver, registry)
        finally:
            await driver.close()


class FakeTime:
    """A monotonic source the test advances by hand (shared by simulator and driver)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = ModbusPumpSimulator([demo_pump(1), demo_pump(2, status="stopped")])
    async with serve_rig(sim) as r:
        yield r
