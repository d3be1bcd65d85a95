"""A capped receive buffer: never grows past its cap, reports what it had to drop."""

from __future__ import annotations

from drivers.errors import FrameError


class CappedBuffer:
    """Bytes received and not yet parsed; beyond ``cap`` the oldest bytes are dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes; beyond the cap the oldest bytes are dropped (and reported)."""
        if len(data) >= self.cap:
            self._dropped += len(self._buf) + len(data) - self.cap
            self._buf = bytearray(data[-self.cap :])
            return
        self._buf += data
        excess = len(self._buf) - self.cap
        if excess > 0:
            del self._buf[:excess]
            self._dropped += excess

    def clear(self) -> None:
        self._buf.clear()
        self._dropped = 0

    def pending(self) -> bytes:
        """The bytes not yet consumed (for error messages on timeout)."""
        return bytes(self._buf)

    def _check_overflow(self) -> None:
        if self._dropped:
            n, self._dropped = self._dropped, 0
            raise FrameError(f"receive buffer over {self.cap} bytes: dropped {n} oldest bytes")
