"""The real-process fixtures themselves work: mosquitto relays, socat ptys carry bytes."""

from __future__ import annotations

import os
import selectors
import socket

from tests.support.procs import Mosquitto, PtyPair


def test_mosquitto_fixture_accepts_connections(mosquitto: Mosquitto) -> None:
    """The private broker listens on its own loopback port."""
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=5):
        pass


def test_pty_pair_carries_bytes_both_ways(pty_pair: PtyPair) -> None:
    """Bytes written to one end of the socat pair arrive at the other."""
    fa = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
    fb = os.open(pty_pair.b, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fa, b"\x0200S\x03")
        sel = selectors.DefaultSelector()
        sel.register(fb, selectors.EVENT_READ)
        got = b""
        while len(got) < 5 and sel.select(5):
            got += os.read(fb, 64)
        sel.close()
        assert got == b"\x0200S\x03"
    finally:
        os.close(fa)
        os.close(fb)
