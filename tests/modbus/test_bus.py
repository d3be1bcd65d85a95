"""Transport URLs and the shared-bus registry."""

from __future__ import annotations

import pytest

from drivers.errors import DriverError
from drivers.modbus import BusRegistry, ModbusPumpDriver, parse_url
from drivers.modbus.bus import LinkKind


@pytest.mark.parametrize(
    ("url", "kind", "host", "port", "path"),
    [
        ("tcp://127.0.0.1:5020", LinkKind.TCP, "127.0.0.1", 5020, ""),
        ("socket://127.0.0.1:4001", LinkKind.RTU_SOCKET, "127.0.0.1", 4001, ""),
        ("/dev/ttyUSB0", LinkKind.RTU_SERIAL, "", 0, "/dev/ttyUSB0"),
    ],
)
def test_transport_urls(url: str, kind: LinkKind, host: str, port: int, path: str) -> None:
    a = parse_url(url)
    assert (a.kind, a.host, a.port, a.path) == (kind, host, port, path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ttyUSB0", "absolute serial device path"),
        ("udp://127.0.0.1:502", "unknown scheme 'udp'"),
        ("tcp://127.0.0.1", "needs host and port"),
        ("tcp://127.0.0.1:99999", "invalid port"),
    ],
)
def test_bad_transport_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(DriverError, match=message):
        parse_url(url)


@pytest.mark.asyncio
async def test_registry_shares_one_bus_per_url_and_closes_with_the_last_user() -> None:
    """Pumps on one URL share one bus (one client, one lock); mismatched baud is refused."""
    registry = BusRegistry()
    a = registry.acquire("/dev/ttyS9", baudrate=9600)
    b = registry.acquire("/dev/ttyS9", baudrate=9600)
    assert a is b
    assert a.lock is b.lock
    with pytest.raises(DriverError, match="already open at 9600 baud, requested 19200"):
        registry.acquire("/dev/ttyS9")
    registry.release(a)
    assert len(registry) == 1
    registry.release(b)
    assert len(registry) == 0


def test_unit_id_outside_the_modbus_range_is_refused() -> None:
    with pytest.raises(DriverError, match=r"unit id 0 outside 1\.\.247"):
        ModbusPumpDriver("tcp://127.0.0.1:5020", 0, registry=BusRegistry())
