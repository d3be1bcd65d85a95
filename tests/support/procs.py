"""Real external processes for tests: mosquitto on a free port, socat pty pairs.

Readiness is detected from the process's own log line (an event), never by sleeping.

Ports: whatever can bind port 0 and report the port it got must do so (our listeners and
simulators all can). :func:`free_port` is only for binaries that cannot (mosquitto): a port free
a moment ago may be taken by the time the binary binds it, so the caller must retry with a new
port when the bind fails (:class:`Mosquitto` does; :func:`retry_address_in_use` does it for
in-process servers that take a fixed port).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import selectors
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0
#: how many ports to try before a "port already in use" is a test failure
PORT_ATTEMPTS = 5
ADDRESS_IN_USE = "Address already in use"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (may be taken by the time it is
    bound: only for binaries that cannot bind port 0, and always with a retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def address_in_use(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from is EADDRINUSE."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        if ADDRESS_IN_USE in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.asynccontextmanager
async def retry_address_in_use(
    open_on: Callable[[int], AbstractAsyncContextManager[T]],
    *,
    errors: tuple[type[Exception], ...] = (OSError,),
    attempts: int = PORT_ATTEMPTS,
    ports: Callable[[], int] = free_port,
) -> AsyncIterator[tuple[T, int]]:
    """Enter ``open_on(port)`` on a free port; yield (its value, the port).

    For in-process servers that must be given a fixed port: a start failing with one of
    ``errors`` because the port was taken meanwhile (EADDRINUSE, or raised from one) is retried
    on another port (from ``ports``), at most ``attempts`` times; any other failure is raised
    at once.
    """
    for attempt in range(1, attempts + 1):
        port = ports()
        manager = open_on(port)
        try:
            value = await manager.__aenter__()
        except errors as exc:
            if attempt == attempts or not address_in_use(exc):
                raise
            continue
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_exit(manager)
            yield value, port
        return
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def wait_for_line(
    proc: subprocess.Popen[bytes],
    needle: bytes,
    timeout: float,
    stream: IO[bytes] | None = None,
) -> bytes:
    """Read ``stream`` (default ``proc.stderr``) until ``needle`` appears; returns what was read.

    Raises RuntimeError (with the output so far) if the process exits, closes the stream or
    does not print ``needle`` within ``timeout`` seconds.
    """
    source = stream if stream is not None else proc.stderr
    assert source is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(source, selectors.EVENT_READ)
        while needle not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise RuntimeError(
                    f"process did not print {needle!r}; output so far:\n{seen.decode()}"
                )
            if sel.select(remaining):
                chunk = os.read(source.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(
                        f"process closed its output; output so far:\n{seen.decode()}"
                    )
                seen += chunk
    return seen


@dataclass
class Mosquitto:
    """A private mosquitto broker. ``extra_conf`` lines are appended to the generated config;
    ``websockets`` adds a WebSocket listener on loopback (its port: :attr:`ws_port`).

    mosquitto cannot listen on port 0 and report the port, so :meth:`start` gives it a free
    port and, when another process took that port meanwhile ("Address already in use"), starts
    it again on new ports (at most ``PORT_ATTEMPTS`` times): read :attr:`port` and
    :attr:`url` after :meth:`start`. A restart keeps the ports (clients reconnect to them).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: list[str] = field(default_factory=list)
    listener_conf: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    websockets: bool = False
    ws_port: int = field(default_factory=free_port)
    _started: bool = field(default=False, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self.listener_conf,
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *self.extra_conf,
        ]
        if self.websockets:
            lines += [f"listener {self.ws_port} 127.0.0.1", "protocol websockets"]
        if any(line.startswith("password_file") for line in self.extra_conf):
            lines.remove("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start and wait for mosquitto's ready line; on a port taken meanwhile, new ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._launch()
            except RuntimeError as exc:
                if self._started or attempt == PORT_ATTEMPTS or not self._port_taken(exc):
                    raise
                self.port, self.ws_port = free_port(), free_port()
                continue
            self._started = True  # a restart must come back where the clients are
            return

    def _port_taken(self, exc: RuntimeError) -> bool:
        # libwebsockets does not say why at these log levels: a bind to a taken port is the
        # cause worth retrying (any other one fails again, and the last error is raised)
        ws_failed = f"Unable to create websockets listener on port {self.ws_port}" in str(exc)
        return address_in_use(exc) or (self.websockets and ws_failed)

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_line(self.proc, b" running", READY_TIMEOUT_S)
        except RuntimeError as exc:
            # it may have exited before its last words were read: they say why
            rest = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                rest = self.proc.stderr.read()
            self.stop()
            raise RuntimeError(f"{exc}{rest.decode(errors='replace')}") from exc
        # Drain further log output in the background via the OS pipe buffer: mosquitto logs
        # little at these levels, and tests that need the log read it themselves.

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class PtyPair:
    """Two connected pseudo-terminals made by socat; ``a`` and ``b`` are their stable paths."""

    a: Path
    b: Path
    proc: subprocess.Popen[bytes]

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def open_pty_pair(workdir: Path) -> PtyPair:
    a, b = workdir / "tty-a", workdir / "tty-b"
    proc = subprocess.Popen(
        [
            "socat",
            "-d",
            "-d",
            f"pty,raw,echo=0,link={a}",
            f"pty,raw,echo=0,link={b}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_line(proc, b"starting data transfer loop", READY_TIMEOUT_S)
    return PtyPair(a, b, proc)


SHIPPED_ACL = Path(__file__).resolve().parents[2] / "systemd" / "mosquitto.acl"


@contextlib.contextmanager
def shipped_acl_broker(
    workdir: Path, logins: Mapping[str, str], gateway: str
) -> Iterator[Mosquitto]:
    """A mosquitto with the shipped ACL (its example gateway id ``bed-12-gw`` replaced by
    ``gateway``) and a password file holding ``logins`` (user -> password)."""
    etc = workdir / "etc"
    etc.mkdir()
    passwd = etc / "passwd"
    for i, (user, password) in enumerate(logins.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        cmd = ["mosquitto_passwd", *flags, str(passwd), user, password]
        subprocess.run(cmd, check=True, capture_output=True)
    passwd.chmod(0o600)
    acl = etc / "infusiond.acl"
    acl.write_text(SHIPPED_ACL.read_text().replace("bed-12-gw", gateway))
    # as root, mosquitto would drop to the `mosquitto` user, which cannot read pytest's
    # private tmp dirs: keep the invoking user
    user = pwd.getpwuid(os.geteuid()).pw_name
    broker = Mosquitto(
        workdir / "mosquitto",
        extra_conf=[f"password_file {passwd}", f"acl_file {acl}", f"user {user}"],
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
