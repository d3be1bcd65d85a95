"""What the benchmarks start and measure: a private broker, simulator processes, a daemon process.

Everything runs on loopback in its own process, so the daemon's CPU and memory can be read from
``/proc/<pid>`` alone. Readiness is an event every time: the simulator's banner on stdout, the
broker's log line, the daemon's ``READY=1`` on a notify socket we own (as systemd would).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.procs import Mosquitto, wait_for_line

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
#: Modbus unit ids served by one simulator process (max 247). Pumps on one simulator share one
#: TCP connection and bus lock in the daemon; at 200 per connection the bus saturates first on a
#: loaded machine (docs/performance.md), 50 is a realistic Modbus-gateway size.
UNITS_PER_SIM = 50

#: the demo's pump-1 program (docs/integration-guide.md): norepinephrine 4 ug/mL, adult-icu, 70 kg
PUMP_PROGRAM = """\
drug = "norepinephrine"
concentration = {{ value = 4, unit = "ug/mL" }}
diluent = "D5W"
route = "central"
library_profile = "adult-icu"
weight_kg = 70
poll_period_s = {period}
"""


def progress(message: str) -> None:
    """A progress line on stderr (the JSON result goes to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean of durations in seconds, as milliseconds."""
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
        "n": len(samples),
    }


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def broker(workdir: Path) -> Iterator[Mosquitto]:
    """A private mosquitto (``set_tcp_nodelay true``, the test fixture's config) on a free port."""
    mosquitto = Mosquitto(workdir / "broker")
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@dataclass
class SimFarm:
    """Modbus pump simulators in their own processes; ``endpoints`` = (url, unit id) per pump."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    endpoints: list[tuple[str, int]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for proc in self.procs:  # all at once: they stop in parallel
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()


def _spawn_sim(count: int) -> subprocess.Popen[bytes]:
    """A simulator process listening on a port the OS picks (read back from its banner)."""
    cmd = [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--listen", "tcp://127.0.0.1:0"]
    cmd += ["--pumps", str(count), "--status", "infusing", "--rate", "52.5"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


_SERVING = re.compile(rb"serving \S+ on (tcp://\S+) unit ids")


@contextlib.contextmanager
def modbus_sims(pumps: int, *, per_process: int = UNITS_PER_SIM) -> Iterator[SimFarm]:
    """``pumps`` simulated pumps infusing at 52.5 mL/h, ``per_process`` unit ids per process.

    The processes start in parallel, each binding port 0; the URL is read from its banner."""
    farm = SimFarm()
    try:
        counts = [min(per_process, pumps - start) for start in range(0, pumps, per_process)]
        farm.procs.extend(_spawn_sim(count) for count in counts)
        for proc, count in zip(farm.procs, counts, strict=True):
            assert proc.stdout is not None
            banner = wait_for_line(proc, b" unit ids", 30, proc.stdout)
            found = _SERVING.search(banner)
            if found is None:
                raise RuntimeError(f"simulator banner without its URL: {banner!r}")
            url = found.group(1).decode()
            farm.endpoints.extend((url, unit) for unit in range(1, count + 1))
        yield farm
    finally:
        farm.close()


def write_config(
    path: Path,
    *,
    gateway_id: str,
    broker_url: str,
    data_dir: Path,
    endpoints: Sequence[tuple[str, int]],
    control: bool = False,
    period_s: float = 1.0,
    first_pump: int = 1,
) -> Path:
    """A daemon config for Modbus pumps ``pump-<first_pump>...`` at ``endpoints``."""
    lines = [
        f'gateway_id = "{gateway_id}"',
        f'data_dir = "{data_dir}"',
        'log_level = "info"',
        "[broker]",
        f'url = "{broker_url}"',
        "[control]",
        f"enabled = {'true' if control else 'false'}",
        f"allowlist = {json.dumps(['bench'] if control else [])}",
    ]
    for index, (url, unit) in enumerate(endpoints):
        lines += [
            "[[pumps]]",
            f'id = "pump-{first_pump + index}"',
            'driver = "modbus"',
            f'url = "{url}"',
            f"unit_id = {unit}",
            PUMP_PROGRAM.format(period=period_s),
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system), resident memory, and the seconds its main thread (the event
    loop) has spent runnable but waiting for a CPU, of one process at one instant."""

    at: float
    cpu_s: float
    rss_kb: int
    runqueue_wait_s: float


def sample(pid: int) -> ProcSample:
    """Read ``/proc/<pid>/stat`` (utime, stime; fields 14-15) and ``statm`` (resident pages)."""
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    waited_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    return ProcSample(at, cpu, resident * PAGE_KB, waited_ns / 1e9)


def cpu_share(a: ProcSample, b: ProcSample) -> float:
    """Cores used between two samples (1.0 = one core fully busy)."""
    return (b.cpu_s - a.cpu_s) / (b.at - a.at)


def starved_share(a: ProcSample, b: ProcSample) -> float:
    """Share of wall time the event loop was ready to run but had no CPU (machine overload)."""
    return (b.runqueue_wait_s - a.runqueue_wait_s) / (b.at - a.at)


class Daemon:
    """``infusiond run --config PATH`` as a subprocess, with a notify socket we listen on.

    ``started`` is taken just before the process is spawned; :meth:`wait_ready` returns the
    seconds from there to ``READY=1``. With ``stats`` the daemon records poll lateness
    (``INFUSIOND_BENCH_STATS``) and writes it to that file on SIGUSR1 (:meth:`poll_stats`).
    """

    def __init__(self, config: Path, workdir: Path, *, stats: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.notify_path = workdir / "notify.sock"
        self.stats_path = workdir / "poll-stats.json" if stats else None
        self.log_path = workdir / "daemon.log"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        env.pop("WATCHDOG_USEC", None)
        if self.stats_path is not None:
            env["INFUSIOND_BENCH_STATS"] = str(self.stats_path)
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from spawn to ``READY=1`` (RuntimeError if it exits or times out)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"daemon not ready; log tail:\n{self.log_tail()}")
            self._notify.settimeout(min(left, 0.5))
            try:
                message = self._notify.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                return time.monotonic() - self.started

    def poll_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ask for the lateness histogram (SIGUSR1) and read the file the daemon writes."""
        assert self.stats_path is not None
        self.stats_path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.stats_path.exists():  # written by rename: present means complete
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no poll stats from the daemon:\n{self.log_tail()}")
            time.sleep(0.02)  # no event exists for "a file appeared" short of inotify
        data: dict[str, Any] = json.loads(self.stats_path.read_text())
        return data

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        stop_process(self.proc, timeout=20)
        self._log.close()
        self._notify.close()
