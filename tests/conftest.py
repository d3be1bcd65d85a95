"""Shared fixtures: real brokers, real pty pairs, real files. See tests/support/procs.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, find_bindir
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (unix socket only; see
    tests/support/postgres.py); fails, never skips, when its binaries are missing."""
    server = PostgresServer(find_bindir())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a new, empty database on the session's server, dropped after the test."""
    dsn = postgres_server.create_database()
    try:
        yield dsn
    finally:
        postgres_server.drop_database(dsn)
