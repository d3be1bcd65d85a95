"""Real external processes for tests: mosquitto on a free port, socat pty pairs.

Readiness is detected from the process's own log line (an event), never by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    """A private mosquitto broker. ``extra_conf`` lines are appended to the generated config."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: list[str] = field(default_factory=list)
    listener_conf: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

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
        if any(line.startswith("password_file") for line in self.extra_conf):
            lines.remove("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_line(self.proc, b" running", READY_TIMEOUT_S)
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
