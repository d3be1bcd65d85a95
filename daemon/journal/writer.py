"""The journal's writer thread: :class:`AsyncJournal` runs every job on one thread that owns
the connection, so SQLite never blocks the event loop, and commits the jobs queued while
the previous commit ran in one transaction (group commit).

Its API is :meth:`AsyncJournal.run` (any :class:`Journal` method as one job, typed by that
method's own signature: ``await journal.run(Journal.recent_events, pump, types, since=t,
limit=n)``) plus the few methods that do more than run one Journal method:

- the event writes (``record_event(s)``, ``settle_command``) keep ``seq`` and wake the MQTT
  outbox and the HL7 follower once the events are durable; ``hl7_enqueue`` wakes the sender;
- ``outbox_ack`` is the one write committed without its own fsync (see :meth:`_execute`);
- the command path's writes (``append``, ``claim_command``, ``set_command_outcome``,
  ``admit_command``) stamp the row with the time it was asked for, not the time the writer
  thread reached it behind a busy batch;
- ``rows`` reads the whole answer inside the job (a cursor must not leave the writer thread),
  ``verify`` walks the chain inside the writer's transaction;
- ``outbox_pending``, ``events_by_seq`` and ``oldest_event_seq`` are what the MQTT side's
  ``Outbox`` and ``EventSource`` protocols name (daemon/mqtt/ knows no :class:`Journal`, and the
  simulation drives the bridge with an outbox of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from daemon.base.events import PumpEvent
from daemon.base.paths import DEFAULT_RETENTION_DAYS
from daemon.base.payload import JsonObject
from daemon.base.results import KeptOutcome, VerdictJson
from daemon.journal.records import (
    CommandClaim,
    JournalError,
    JournalKind,
    JournalRow,
    OutboxItem,
    VerifyReport,
)
from daemon.journal.store import Journal
from drivers.clock import utc_now

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass
class _Job:
    fn: Callable[[Journal], Any]
    future: asyncio.Future[Any]
    #: False for a write whose loss in a power cut is harmless (an outbox ack: the event is
    #: published again with its seq, at least once): see :meth:`AsyncJournal._execute`
    durable: bool = True


_STOP = object()


class AsyncJournal:
    """The journal for the event loop: every call runs on one writer thread.

    Jobs queued while a commit is in flight are committed together (group commit, at most
    ``max_batch`` per transaction); each job runs in its own savepoint, so one failing job
    does not undo the others. A job whose caller was cancelled still completes.
    """

    def __init__(self, journal: Journal, loop: asyncio.AbstractEventLoop, max_batch: int) -> None:
        self._journal = journal
        self._loop = loop
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._seq = 0
        self._closed = False
        # transactions committed so far (each is one fsync under synchronous=FULL); written by
        # the writer thread only, read by tests and diagnostics
        self.commits = 0
        self._relaxed = False  # the connection's synchronous is NORMAL (else FULL); writer only
        self.outbox_changed = asyncio.Event()
        #: set when HL7 messages are queued (daemon/ihe waits on it)
        self.hl7_changed = asyncio.Event()
        #: set when events are journaled (the HL7 follower turns them into messages)
        self.events_added = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        gateway_id: str,
        max_batch: int = 256,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> Self:
        """Open or create the journal in ``data_dir`` (raises DataDirError / JournalError);
        see :meth:`Journal.open`."""
        journal = await asyncio.to_thread(
            Journal.open, data_dir, gateway_id=gateway_id, retention_days=retention_days
        )
        self = cls(journal, asyncio.get_running_loop(), max_batch)
        self._thread.start()
        self._seq = await self._submit(Journal.current_seq)
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def session(self) -> str:
        return self._journal.session

    @property
    def created_anew(self) -> bool:
        return self._journal.created_anew

    @property
    def path(self) -> Path:
        return self._journal.path

    @property
    def seq(self) -> int:
        """The seq of the latest committed event: what non-event envelopes carry."""
        return self._seq

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun (no job is taken any more)."""
        return self._closed

    async def aclose(self) -> None:
        """Finish queued jobs, then close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[_Job] = []
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            batch.append(first)
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                assert isinstance(nxt, _Job)
                batch.append(nxt)
            self._execute(batch)
        self._journal.close()

    def _execute(self, batch: list[_Job]) -> None:
        """Run ``batch`` in one transaction, each job in its own savepoint. A job's own error
        (a payload that cannot be encoded...) undoes that job only. An SQLite error (full disk,
        I/O error, read-only file...) undoes the whole transaction, since SQLite may already
        have rolled it back: every job of the batch fails with JournalError, and nothing of it
        is in the file. Either way this thread goes on with the next batch."""
        journal = self._journal
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        # A batch of outbox acks only commits without the fsync (synchronous=NORMAL: still
        # atomic; a power cut may undo it, and the event is then published again, as after
        # any lost ack). Its commit then never holds up a durable job queued behind it, such
        # as the next command's claim (docs/performance.md).
        relaxed = not any(job.durable for job in batch)
        try:
            journal.rollback()  # in case a failed ROLLBACK left the last batch's open
            if relaxed != self._relaxed:
                journal.set_durable(durable=not relaxed)
                self._relaxed = relaxed
            journal.begin()
            for job in batch:
                try:
                    with journal.savepoint():
                        value = job.fn(journal)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - forwarded to the awaiting caller
                    outcomes.append((job, None, exc))
                    continue
                outcomes.append((job, value, None))
            journal.commit()
            self.commits += 1
        except sqlite3.Error as exc:
            journal.rollback()
            failure = journal.write_error(exc)
            outcomes = [(job, None, failure) for job in batch]
        except JournalError as exc:  # BEGIN or COMMIT failed (already rolled back)
            outcomes = [(job, None, exc) for job in batch]
        for job, value, error in outcomes:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                self._loop.call_soon_threadsafe(_resolve, job.future, value, error)

    async def run(
        self, fn: Callable[Concatenate[Journal, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``fn(journal, *args, **kwargs)`` as one job on the writer thread and return what
        it returns (or raise what it raised): its own savepoint in the next group commit.

        A query or a write that needs nothing more is called this way, ``await
        journal.run(Journal.outbox_pending, 100)``, typed by ``fn``'s own signature; the methods
        below are only those that do more than run one :class:`Journal` method (keep ``seq``,
        wake the outbox or HL7 sender, choose durability, batch several calls in one job).
        The arguments are bound now: pass a list, not an iterator another task may advance."""
        return await self._submit(lambda journal: fn(journal, *args, **kwargs))

    async def _submit(self, fn: Callable[[Journal], _T], *, durable: bool = True) -> _T:
        if self._closed:
            raise JournalError(f"journal {self._journal.path} is closed")
        future: asyncio.Future[_T] = self._loop.create_future()
        self._queue.put(_Job(fn, future, durable))
        return await future

    # -- API ---------------------------------------------------------------------------------

    async def append(
        self,
        kind: JournalKind,
        payload: JsonObject,
        *,
        pump_id: str | None = None,
        ts: datetime | None = None,
    ) -> JournalRow:
        """Append a row (command, verdict, override, alarm, state...)."""
        when = ts or utc_now()
        return await self._submit(lambda j: j.append(kind, payload, ts=when, pump_id=pump_id))

    async def record_event(
        self, pump_id: str, event: PumpEvent, *, ts: datetime | None = None
    ) -> OutboxItem:
        """Journal an event with the next seq and queue it for publication (durably)."""
        [item] = await self.record_events(pump_id, [event], ts=ts)
        return item

    async def record_events(
        self, pump_id: str, events: Sequence[PumpEvent], *, ts: datetime | None = None
    ) -> list[OutboxItem]:
        """Journal several events (consecutive seqs) as one job: all of them or none."""
        when = ts or utc_now()
        wanted = list(events)
        items = await self._submit(
            lambda j: [j.record_event(pump_id, event, ts=when) for event in wanted]
        )
        self._published(items)
        return items

    def _published(self, items: list[OutboxItem]) -> None:
        """Events are durable: keep ``seq`` and wake the outbox and the HL7 follower."""
        if items:
            self._seq = max(self._seq, items[-1].seq)
            self.outbox_changed.set()
            self.events_added.set()

    async def claim_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: JsonObject,
        ts: datetime | None = None,
    ) -> CommandClaim:
        """Journal a command and claim its id (see :meth:`Journal.claim_command`)."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.claim_command(command_id, pump_id=pump_id, command=command, ts=when)
        )

    async def set_command_outcome(
        self,
        command_id: str,
        outcome: KeptOutcome,
        *,
        pump_id: str | None,
        kind: JournalKind = JournalKind.COMMAND,
        ts: datetime | None = None,
    ) -> JournalRow:
        """Record a command's outcome for dedupe and journal it."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.set_command_outcome(
                command_id, outcome, pump_id=pump_id, ts=when, kind=kind
            )
        )

    async def admit_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: JsonObject,
        verdict: VerdictJson,
        outcome: KeptOutcome,
        ts: datetime | None = None,
    ) -> CommandClaim:
        """Claim + verdict + ``accepted`` outcome as one job, hence one transaction (see
        :meth:`Journal.admit_command`)."""
        when = ts or utc_now()
        return await self._submit(
            lambda j: j.admit_command(
                command_id,
                pump_id=pump_id,
                command=command,
                verdict=verdict,
                outcome=outcome,
                ts=when,
            )
        )

    async def settle_command(
        self,
        command_id: str,
        outcome: KeptOutcome,
        *,
        pump_id: str,
        events: Sequence[PumpEvent],
        ts: datetime | None = None,
    ) -> list[OutboxItem]:
        """The command's events and final outcome as one job, hence one transaction (see
        :meth:`Journal.settle_command`); the events are then queued for publication."""
        when = ts or utc_now()
        wanted = list(events)
        items = await self._submit(
            lambda j: j.settle_command(command_id, outcome, pump_id=pump_id, events=wanted, ts=when)
        )
        self._published(items)
        return items

    async def events_by_seq(self, from_seq: int, to_seq: int, limit: int) -> list[JournalRow]:
        """See :meth:`Journal.events_by_seq`."""
        return await self._submit(lambda j: j.events_by_seq(from_seq, to_seq, limit))

    async def oldest_event_seq(self) -> int | None:
        """See :meth:`Journal.oldest_event_seq`."""
        return await self._submit(lambda j: j.oldest_event_seq())

    async def hl7_enqueue(
        self, messages: Sequence[tuple[str, Callable[[str], bytes]]], *, cursor: int | None
    ) -> list[str]:
        """See :meth:`Journal.hl7_enqueue`; wakes the HL7 sender."""
        wanted = list(messages)
        ids = await self._submit(lambda j: j.hl7_enqueue(wanted, cursor=cursor))
        if ids:
            self.hl7_changed.set()
        return ids

    async def outbox_pending(self, limit: int = 1000) -> list[OutboxItem]:
        """Unacknowledged events, oldest first."""
        return await self._submit(lambda j: j.outbox_pending(limit))

    async def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Forget events the broker acknowledged (committed without an fsync of its own: a
        power cut may bring them back, to be published again with their seq)."""
        wanted = list(seqs)
        return await self._submit(lambda j: j.outbox_ack(wanted), durable=False)

    async def rows(
        self,
        *,
        after: int = 0,
        pump_id: str | None = None,
        kinds: Iterable[JournalKind] | None = None,
    ) -> list[JournalRow]:
        """Rows after ``after`` (e.g. a pump's recent verdicts for the gate's history)."""
        wanted = list(kinds) if kinds is not None else None
        return await self._submit(
            lambda j: list(j.rows(after=after, pump_id=pump_id, kinds=wanted))
        )

    async def verify(self) -> VerifyReport:
        """Walk the chain (inside the writer's transaction: a consistent view)."""
        return await self._submit(Journal._verify)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
