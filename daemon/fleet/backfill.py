"""Filling gaps: ask gateways for the events the store misses (``bridge/request/events``).

Gaps are found and claimed in the store (daemon/fleet/gaps.py: every collector of a group
shares them, each gap is claimed by one at a time, with capped exponential backoff). A
claimed gap is requested from its gateway; the answer (``bridge/response/events``, received
by every collector) is stored by whoever receives it, and the requester follows it up: the
next page from ``next_seq``, or, when the gateway no longer has the events (journal created
anew: ``unknown_session``; retention: ``not_retained``), a permanent gap on record.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from daemon.fleet import gaps
from daemon.fleet.records import EventsResponse, ResponseError
from daemon.fleet.store import Conn
from daemon.mqtt.events_request import MAX_RANGE

log = structlog.get_logger("infusiond.fleet.backfill")

Publish = Callable[[str, bytes], Awaitable[None]]

#: a request unanswered for this long is forgotten (the gap's backoff asks again)
REQUEST_TIMEOUT_S = 60.0
#: while a follow-up page is requested, what remains of its gap is not due before this
PAGING_GRACE = timedelta(seconds=15)


@dataclass(frozen=True)
class PendingRequest:
    """A request this collector sent and has not had the answer to."""

    gateway: str
    session: str
    from_seq: int
    to_seq: int
    sent_at: float  # monotonic


@dataclass
class BackfillStats:
    requests: int = 0
    pages: int = 0
    errors: int = 0
    permanent: int = 0


class Backfill:
    """Requests for one collector; :meth:`tick` periodically, :meth:`on_response` per answer."""

    def __init__(
        self,
        conn: Conn,
        publish: Publish,
        *,
        requester: str,
        grace: timedelta = gaps.DEFAULT_GRACE,
        base: timedelta = timedelta(seconds=2),
        cap: timedelta = timedelta(seconds=60),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._publish = publish
        self._requester = requester
        self._numbers = itertools.count(1)
        self._grace = grace
        self._base = base
        self._cap = cap
        self._clock = clock
        self.pending: dict[str, PendingRequest] = {}
        self.stats = BackfillStats()

    async def request(self, gateway: str, session: str, from_seq: int, to_seq: int) -> str:
        """Ask ``gateway`` for ``from_seq..to_seq`` of ``session`` (at most ``MAX_RANGE`` seqs
        per request: the rest is asked for after this part is answered); returns the id."""
        to_seq = min(to_seq, from_seq + MAX_RANGE - 1)
        request_id = f"{self._requester[:40]}-{next(self._numbers)}"
        self.pending[request_id] = PendingRequest(gateway, session, from_seq, to_seq, self._clock())
        body = {"id": request_id, "from_seq": from_seq, "to_seq": to_seq, "session": session}
        await self._publish(
            f"infusiond/{gateway}/bridge/request/events",
            json.dumps(body, separators=(",", ":")).encode(),
        )
        self.stats.requests += 1
        return request_id

    async def refresh(self, sessions: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Recompute the gaps of these sessions from what the store holds; returns each
        one's ``contiguous_upto``."""
        settled = {}
        for gateway, session in sorted(sessions):
            check = await gaps.check_session(self._conn, gateway, session, grace=self._grace)
            settled[(gateway, session)] = check.contiguous_upto
        return settled

    async def tick(self) -> int:
        """Forget stale requests, re-check the sessions with due gaps, claim and request them;
        returns how many requests were sent."""
        now = self._clock()
        for request_id, pending in list(self.pending.items()):
            if now - pending.sent_at > REQUEST_TIMEOUT_S:
                del self.pending[request_id]
        cur = await self._conn.execute(
            "SELECT DISTINCT gateway, session FROM gaps "
            "WHERE status = 'open' AND next_attempt_at <= now()"
        )
        await self.refresh({(str(g), str(s)) for g, s in await cur.fetchall()})
        claimed = await gaps.claim_due_gaps(self._conn, base=self._base, cap=self._cap)
        for gap in claimed:
            await self.request(gap.gateway, gap.session, gap.from_seq, gap.to_seq)
        return len(claimed)

    async def on_response(self, response: EventsResponse) -> None:
        """Follow up an answer to one of our requests (its events are already stored)."""
        pending = self.pending.pop(response.id or "", None)
        if pending is None or pending.gateway != response.gateway:
            return
        self.stats.pages += 1
        gateway, session = pending.gateway, pending.session
        if response.ok:
            grace = self._grace
            next_seq = response.next_seq
            if next_seq is not None and pending.from_seq < next_seq <= pending.to_seq:
                await self.request(gateway, session, next_seq, pending.to_seq)
                grace = PAGING_GRACE  # the next page is on its way: no second request meanwhile
            await gaps.refresh_session(self._conn, gateway, session, grace=grace)
            return
        self.stats.errors += 1
        error = response.error or ResponseError(None, "")
        code = str(error.code)
        message = f"{code}: {error.message[:300]}"
        oldest = error.oldest_seq
        if code == "unknown_session":
            await self._permanent(pending, pending.to_seq, message)
        elif code == "not_retained" and oldest is not None:
            if oldest > pending.from_seq:
                await self._permanent(pending, min(pending.to_seq, oldest - 1), message)
            if oldest <= pending.to_seq:
                await self.request(gateway, session, max(oldest, pending.from_seq), pending.to_seq)
        else:
            log.warning("backfill_refused", gateway=gateway, session=session, error=message)
            await gaps.record_gap_error(self._conn, gateway, session, pending.from_seq, message)

    async def _permanent(self, pending: PendingRequest, to_seq: int, reason: str) -> None:
        self.stats.permanent += 1
        log.warning(
            "gap_permanent",
            gateway=pending.gateway,
            session=pending.session,
            from_seq=pending.from_seq,
            to_seq=to_seq,
            reason=reason,
        )
        await gaps.mark_permanent(
            self._conn,
            pending.gateway,
            pending.session,
            pending.from_seq,
            to_seq,
            reason=reason,
            grace=timedelta(0),
        )
