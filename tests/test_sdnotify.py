"""sd_notify messages reach a real unix datagram socket in the systemd format."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from daemon.core.sdnotify import Notifier


def test_notify_sends_key_value_lines(tmp_path: Path) -> None:
    """READY and STATUS arrive as one datagram of KEY=value lines."""
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    notifier = Notifier(path)
    try:
        assert notifier.enabled
        notifier.notify(READY="1", STATUS="2 pumps online")
        assert server.recv(1024) == b"READY=1\nSTATUS=2 pumps online"
    finally:
        notifier.close()
        server.close()


def test_abstract_namespace_address_is_supported() -> None:
    """An address starting with @ is the Linux abstract namespace."""
    name = f"@infusiond-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name[1:])
    server.settimeout(5)
    notifier = Notifier(name)
    try:
        notifier.notify(WATCHDOG="1")
        assert server.recv(1024) == b"WATCHDOG=1"
    finally:
        notifier.close()
        server.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd the notifier is disabled and silent."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.notify(READY="1")
    assert notifier.watchdog_interval_s() is None


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC=10s gives a 5 s ping period, only for our own pid."""
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("").watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier("").watchdog_interval_s() is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """If systemd's socket is gone, notify() neither raises nor blocks."""
    notifier = Notifier(str(tmp_path / "missing.sock"))
    notifier.notify(READY="1")
    notifier.close()
