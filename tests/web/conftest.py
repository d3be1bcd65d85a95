"""Fixtures of the web tests: a mosquitto with a WebSocket listener (the dashboard's broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Mosquitto


@pytest.fixture
def ws_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int]]:
    """mosquitto with a second, WebSocket listener on loopback; yields (broker, ws port)."""
    broker = Mosquitto(tmp_path / "mosquitto", websockets=True)
    broker.start()  # on ports taken meanwhile, mosquitto is restarted on new ones
    try:
        yield broker, broker.ws_port
    finally:
        broker.stop()
