"""systemd notification protocol (sd_notify): READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

Written by hand rather than taken from a package: the protocol is one datagram to the unix socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), and a dependency for
that would be larger than the code. Without ``$NOTIFY_SOCKET`` every call is a no-op, so the
daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends sd_notify messages; the socket is opened once and non-blocking."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(0.0)  # non-blocking

    @property
    def enabled(self) -> bool:
        """True when running under a systemd unit with Type=notify."""
        return self._sock is not None

    def watchdog_interval_s(self) -> float | None:
        """Half of WatchdogSec (the recommended ping period), or None when not configured."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def notify(self, **fields: str) -> None:
        """Send ``KEY=value`` lines, e.g. ``notify(READY="1", STATUS="polling 2 pumps")``."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self._address)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            # systemd is gone or busy; a missed notification must never stop the daemon
            return

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
