"""Every place where the fault simulator touches the daemon's internals, in one module.

When the core changes (Gateway's constructor, the journal's writer, the gate's task names),
this is the file to adapt; the harness, fakes and invariants only use what is here plus the
gateway's public outputs (results, events, the journal file).

- :func:`build_gateway`: the real :class:`daemon.core.gateway.Gateway` on sim drivers, a sim bridge
  and the virtual wall clock (through its ``driver_factory``/``bridge_factory``/``clock`` seams).
- :func:`simulated_process`: what cannot run as is under virtual time, replaced for the
  duration of a run: ``time.monotonic`` in the channel and the gateway (poll pacing, publish
  refresh, supervisor backoff: real elapsed time would make runs differ), the journal's writer
  thread (jobs run inline on the loop thread, through
  the real ``AsyncJournal._execute``, so batching, savepoints and error mapping are the real
  ones), the journal's own clock, the refusal desk's windows (its ``clock``/``now`` seams get
  the virtual clocks), and the gateway's ``gc.freeze`` (a once-per-process
  optimisation that would keep every simulated gateway alive forever); the shipped library
  is loaded once per process instead of at every start.
- :class:`JournalFaults`: write faults at exact statements of the journal's transactions.
- :func:`make_program`/:func:`dose_at`: the bag hung, as the gateway's channels describe it,
  and the dose it delivers at a rate (the harness's ground truth uses the same units code).
- :func:`command_of_current_task`: which command a driver call belongs to (the gate runs each
  command in a task named ``command:<pump>:<id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Self
from unittest import mock

import daemon.core.channel
import daemon.core.gate
import daemon.core.gateway
import daemon.core.parts
import daemon.journal.schema
import daemon.journal.writer
from daemon.base.config import Config
from daemon.base.paths import DEFAULT_RETENTION_DAYS, journal_path
from daemon.base.topics import Topics
from daemon.core.gateway import Gateway
from daemon.core.program import Program, dose_at
from daemon.journal import (
    AsyncJournal,
    Journal,
    JournalError,
    JournalKind,
)
from daemon.journal.writer import _Job
from daemon.mqtt.bridge_inbound import IncomingCommand
from daemon.mqtt.event_messages import outbox_message
from daemon.mqtt.refusals import RefusalDesk
from drivers.base import Driver
from protocol.library import Library

__all__ = [
    "IncomingCommand",
    "JournalError",
    "JournalFaults",
    "Program",
    "Topics",
    "build_gateway",
    "command_of_current_task",
    "dose_at",
    "journal_events",
    "journal_head",
    "journal_refusal_summaries",
    "journal_verify",
    "make_program",
    "outbox_message",
    "shipped_library",
    "simulated_process",
]

_WRITES = ("INSERT", "UPDATE", "DELETE")


def make_program(
    drug: str,
    concentration: str,
    concentration_unit: str,
    dose_unit: str,
    diluent: str,
    route: str,
    *,
    weight_kg: int = 70,
    bed: str = "bed-1",
) -> Program:
    """A bag of ``drug`` for a patient of ``weight_kg`` in profile adult-icu."""
    return Program(
        drug=drug,
        concentration=Decimal(concentration),
        concentration_unit=concentration_unit,
        dose_unit=dose_unit,
        diluent=diluent,
        route=route,
        profile="adult-icu",
        weight_kg=Decimal(weight_kg),
        bed=bed,
    )


@dataclass
class JournalFaults:
    """Fail chosen statements of the journal's writes with a real ``sqlite3`` error.

    ``arm(point, skip, count, message)``: let ``skip`` statements of kind ``point`` through
    (``"write"``: INSERT/UPDATE/DELETE; ``"commit"``: COMMIT), then fail the next ``count``.
    """

    point: str = "commit"
    skip: int = 0
    count: int = 0
    message: str = "database or disk is full"
    failed: list[str] = field(default_factory=list)
    _dirty: bool = False  # the open transaction has written something

    def arm(self, point: str, skip: int, count: int, message: str) -> None:
        self.point, self.skip, self.count, self.message = point, skip, count, message

    def disarm(self) -> None:
        self.count = 0

    def check(self, sql: str) -> None:
        """Called before each statement; raises the armed error at the chosen point. A COMMIT
        fails only when its transaction wrote something (as SQLITE_FULL would)."""
        verb = sql.lstrip().split(None, 1)[0].upper()
        if verb in ("BEGIN", "ROLLBACK"):
            self._dirty = False
        kind = "write" if verb in _WRITES else "commit" if verb == "COMMIT" else None
        if kind == "commit" and not self._dirty:
            return
        if kind == "write":
            self._dirty = True
        if kind != self.point or self.count <= 0:
            return
        if self.skip > 0:
            self.skip -= 1
            return
        self.count -= 1
        self.failed.append(sql.strip()[:40])
        raise sqlite3.OperationalError(self.message)


class _FaultyConnection:
    """A ``sqlite3.Connection`` whose ``execute``/``executemany`` may fail (see JournalFaults)."""

    def __init__(self, conn: sqlite3.Connection, faults: JournalFaults) -> None:
        self._conn = conn
        self._faults = faults

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._faults.check(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._faults.check(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _InlineJournal(AsyncJournal):
    """AsyncJournal whose jobs run on the loop thread, one transaction each (no writer thread:
    under virtual time the loop would look idle while the thread works)."""

    faults: JournalFaults = JournalFaults()

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        gateway_id: str,
        max_batch: int = 256,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> Self:
        journal = Journal.open(data_dir, gateway_id=gateway_id, retention_days=retention_days)
        journal._conn = _FaultyConnection(journal._conn, cls.faults)  # type: ignore[assignment]
        self = cls(journal, asyncio.get_running_loop(), max_batch)
        self._seq = journal.current_seq()
        return self

    async def _submit(self, fn: Callable[[Journal], Any]) -> Any:
        if self._closed:
            raise JournalError(f"journal {self._journal.path} is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._execute([_Job(fn, future)])
        return await future

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._journal.close()


class _NoGc:
    @staticmethod
    def collect() -> int:
        return 0

    @staticmethod
    def freeze() -> None:
        return None


@functools.cache
def shipped_library() -> Library:
    """The shipped drug library, loaded and checked once per process (it is immutable)."""
    return daemon.core.parts.load_checked_library(Config(gateway_id="sim"))


def _shipped_library_for(_cfg: Config) -> Library:
    return shipped_library()


@dataclass(frozen=True)
class _MonotonicOnly:
    """Stands for the ``time`` module in daemon modules that only read ``time.monotonic``."""

    monotonic: Callable[[], float]


@contextlib.contextmanager
def simulated_process(
    faults: JournalFaults, clock: Callable[[], datetime], monotonic: Callable[[], float]
) -> Iterator[None]:
    """Patch what cannot run under virtual time (see the module docstring)."""
    journal_class = type("SimJournal", (_InlineJournal,), {"faults": faults})
    virtual_time = _MonotonicOnly(monotonic)
    with (
        mock.patch.object(daemon.core.channel, "time", virtual_time),
        mock.patch.object(daemon.core.gateway, "time", virtual_time),
        mock.patch.object(daemon.core.gateway, "AsyncJournal", journal_class),
        mock.patch.object(daemon.journal.schema, "utc_now", clock),
        mock.patch.object(daemon.journal.writer, "utc_now", clock),
        mock.patch.object(
            daemon.core.gate,
            "RefusalDesk",
            functools.partial(RefusalDesk, clock=monotonic, now=clock),
        ),
        mock.patch.object(daemon.core.gateway, "gc", _NoGc),
        mock.patch.object(daemon.core.gateway, "load_checked_library", _shipped_library_for),
    ):
        yield


def build_gateway(
    config: Config,
    *,
    drivers: Mapping[str, Driver],
    bridge_factory: Callable[[Any], Any],
    clock: Callable[[], datetime],
) -> Gateway:
    """The real gateway on sim peers; ``bridge_factory(journal)`` returns the bridge."""
    return Gateway(
        config,
        driver_factory=lambda pump: drivers[pump.id],
        bridge_factory=lambda _cfg, journal: bridge_factory(journal),
        clock=clock,
    )


def command_of_current_task() -> str | None:
    """The command id a driver call is made for, or None (poll, reconnect, anything else)."""
    task = asyncio.current_task()
    name = task.get_name() if task is not None else ""
    kind, _, rest = name.partition(":")
    if kind != "command":
        return None
    return rest.partition(":")[2] or None


@dataclass(frozen=True)
class JournaledEvent:
    n: int
    pump_id: str | None
    event: dict[str, Any]


def journal_head(data_dir: Path) -> int:
    """The number of the journal's last row (read-only, beside the running gateway)."""
    path = journal_path(data_dir)
    if not path.exists():
        return 0
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT coalesce(max(n), 0) FROM journal").fetchone()
    finally:
        conn.close()
    return int(row[0])


def journal_events(data_dir: Path) -> list[JournaledEvent]:
    """Every ``pump.event`` the journal holds, in order (none before the journal exists)."""
    path = journal_path(data_dir)
    if not path.exists():
        return []
    journal = Journal.open_readonly(path)
    try:
        return [
            JournaledEvent(row.n, row.pump_id, row.payload.get("event", {}))
            for row in journal.rows(kinds=[JournalKind.EVENT])
        ]
    finally:
        journal.close()


def journal_refusal_summaries(data_dir: Path) -> list[dict[str, Any]]:
    """The refusal desk's summary rows (refusals answered or dropped beyond the window's
    journal budget, counted per error code), in order."""
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        return [
            row.payload["refusals"]
            for row in journal.rows(kinds=[JournalKind.COMMAND])
            if "refusals" in row.payload
        ]
    finally:
        journal.close()


def journal_verify(data_dir: Path) -> str | None:
    """None when the chain verifies, else the reason naming the first bad row."""
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        report = journal.verify()
    finally:
        journal.close()
    return None if report.ok else f"row {report.first_bad}: {report.reason}"
