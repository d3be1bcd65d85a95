"""Shared fixtures: real brokers, real pty pairs, real files. See tests/support/procs.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Mosquitto, PtyPair, open_pty_pair


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto on a free loopback port (TCP_NODELAY on), stopped after the test."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """Two connected ptys (socat); one end for a simulator, the other for a driver."""
    pair = open_pty_pair(tmp_path)
    try:
        yield pair
    finally:
        pair.close()
