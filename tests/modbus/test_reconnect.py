"""Link loss and recovery: the simulator restarts on the same port, the driver reconnects
with capped exponential backoff and walks its connection state machine."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from decimal import Decimal

import pytest

from drivers.backoff import Backoff
from drivers.base import ConnectionState, RunState
from drivers.errors import DriverError
from drivers.modbus import BusRegistry, ModbusPumpDriver
from sim_devices.modbus_server import ModbusPumpSimulator, Served, SimulatorError
from tests.modbus.conftest import demo_pump

DEADLINE_S = 10.0
REBIND_ATTEMPTS = 5


async def _until_online(driver: ModbusPumpDriver) -> int:
    """Poll like a channel does until a status is read; returns the failed attempts."""
    failures = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            await driver.read_status()
        except DriverError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)  # the channel's poll period: no event exists for this
        else:
            return failures


async def _serve_again(
    stack: contextlib.AsyncExitStack, sim: ModbusPumpSimulator, url: str
) -> Served:
    """Serve ``sim`` again on the port it had (a device restart keeps its address). The port
    was bound by the OS (port 0) and read back; if it is briefly still in use when re-bound
    (EADDRINUSE), retry the same port a few times."""
    for attempt in range(1, REBIND_ATTEMPTS + 1):
        try:
            return await stack.enter_async_context(sim.serving(url))
        except SimulatorError:
            if attempt == REBIND_ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * attempt)  # a retry delay, not a synchronisation
    raise AssertionError("unreachable")


@pytest.mark.asyncio
async def test_driver_reconnects_after_the_simulator_restarts_on_the_same_port() -> None:
    """Online -> offline (with a reason) when the device goes away -> online again after it
    restarts; the pump state survives the restart of the server."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    backoff = Backoff(initial_s=0.01, maximum_s=0.05, rng=lambda: 0.0)
    device = contextlib.AsyncExitStack()
    url = (await device.enter_async_context(sim.serving("tcp://127.0.0.1:0"))).url
    driver = ModbusPumpDriver(url, 1, registry=BusRegistry(), timeout_s=0.3, backoff=backoff)
    try:
        async with device:
            await driver.connect()
            assert driver.connection is ConnectionState.ONLINE
            assert (await driver.set_rate(Decimal(45))).readback is not None
        # the device went away; the driver stays
        with pytest.raises(DriverError):
            await driver.read_status()
        assert driver.connection is ConnectionState.OFFLINE
        assert driver.connection_reason
        with pytest.raises(DriverError, match=r"cannot connect|offline"):
            await driver.read_status()  # nobody listens: connect refused, backoff grows
        async with contextlib.AsyncExitStack() as again:
            await _serve_again(again, sim, url)
            await _until_online(driver)
            status = await driver.read_status()
            assert driver.connection is ConnectionState.ONLINE
            assert status.rate_ml_h == Decimal("45.00")
            assert status.state is RunState.INFUSING
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_reconnect_attempts_wait_for_the_backoff() -> None:
    """While offline, operations inside the backoff delay fail fast without connecting."""
    with socket.socket() as closed:  # bound by the OS and never listening: connects refused
        closed.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        backoff = Backoff(initial_s=30.0, maximum_s=60.0, rng=lambda: 0.0)
        driver = ModbusPumpDriver(url, 1, registry=BusRegistry(), timeout_s=0.3, backoff=backoff)
        try:
            with pytest.raises(DriverError, match=r"cannot connect; next attempt in 30\.0 s"):
                await driver.connect()
            assert driver.connection is ConnectionState.OFFLINE
            with pytest.raises(DriverError, match=r"offline.*next reconnect attempt in"):
                await driver.read_status()
            assert backoff.attempts == 1  # the second call did not try to connect
        finally:
            await driver.close()
