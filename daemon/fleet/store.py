"""The fleet store in PostgreSQL (psycopg 3, async): write batches, read for reports and pages.

Tables and their identities are described in ``daemon/fleet/__init__.py`` and
``daemon/fleet/migrations/``. Every write is idempotent: a re-delivered event (same gateway,
session, seq), command result or state (same published bytes) is stored once.

Connections: :func:`connect` (clear :class:`FleetError` for a bad DSN or an unreachable
server) then :func:`daemon.fleet.migrate.migrate`. Functions take an ``AsyncConnection`` and do
not commit unless documented: :func:`store_batch` runs in its own transaction.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from daemon.base.payload import JsonObject
from daemon.fleet.errors import DatabaseUnavailable, FleetError
from daemon.fleet.records import (
    Batch,
    CommandResultRecord,
    EventRecord,
)

Conn = psycopg.AsyncConnection[Any]
_cursor_names = itertools.count(1)
#: every committed :func:`store_batch` notifies this channel (LISTEN for live views and tests)
NOTIFY_CHANNEL = "infusiond_fleet"


async def connect(dsn: str, *, autocommit: bool = True) -> Conn:
    """Open a connection; :class:`FleetError` naming the DSN problem, or
    :class:`DatabaseUnavailable` when the server cannot be reached."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        msg = f"--postgres: not a valid PostgreSQL DSN or URL: {exc}"
        raise FleetError(msg) from None
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        msg = f"--postgres: cannot connect to PostgreSQL: {str(exc).strip()}"
        raise DatabaseUnavailable(msg) from None


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What :func:`store_batch` wrote: new rows, and re-deliveries that were already stored."""

    events_inserted: int
    events_duplicate: int
    command_results_inserted: int
    pump_states_inserted: int
    sessions: tuple[tuple[str, str], ...]  # the (gateway, session) pairs the batch touched


_EVENT_COLUMNS = "gateway, session, seq, ts, pump_id, type, data"

_UPSERT_LATEST = """
INSERT INTO pump_states_latest AS l (gateway, pump_id, session, seq, ts, data, received_at)
VALUES (%s, %s, %s, %s, %s, %s, now())
ON CONFLICT (gateway, pump_id) DO UPDATE
SET session = excluded.session, seq = excluded.seq, ts = excluded.ts, data = excluded.data,
    received_at = excluded.received_at
WHERE l.session <> excluded.session OR (excluded.seq, excluded.ts) > (l.seq, l.ts)
"""

_UPSERT_INFO = """
INSERT INTO gateways AS g (gateway, session, info, info_seq, info_ts, last_seen)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (gateway) DO UPDATE
SET session = excluded.session, info = excluded.info, info_seq = excluded.info_seq,
    info_ts = excluded.info_ts, last_seen = now()
WHERE g.info_ts IS NULL OR excluded.info_ts >= g.info_ts
"""

_UPSERT_BRIDGE_STATE = """
INSERT INTO gateways (gateway, bridge_state, state_at, last_seen) VALUES (%s, %s, now(), now())
ON CONFLICT (gateway) DO UPDATE
SET bridge_state = excluded.bridge_state, state_at = now(), last_seen = now()
"""

_UPSERT_SESSION = """
INSERT INTO sessions AS s (gateway, session, high_water) VALUES (%s, %s, %s)
ON CONFLICT (gateway, session) DO UPDATE
SET high_water = greatest(s.high_water, excluded.high_water), updated_at = now()
WHERE excluded.high_water > s.high_water
"""


#: COPY text format: backslash, newline, carriage return and tab are escaped in a field
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_text(events: Sequence[EventRecord]) -> bytes:
    """The events as one buffer in COPY's text format (columns as ``_EVENT_COLUMNS``).

    Text fields are escaped; ``data`` is written as compact JSON (ASCII, so its only character
    to escape is the backslash); NUL cannot occur (:mod:`daemon.fleet.records` refuses it)."""
    esc = _COPY_ESCAPES
    dumps = _DUMPS
    lines = [
        f"{e.gateway.translate(esc)}\t{e.session.translate(esc)}\t{e.seq}\t"
        f"{e.ts.isoformat()}\t{e.pump_id.translate(esc)}\t{e.type.translate(esc)}\t"
        f"{dumps(e.data).translate(esc)}\n"
        for e in events
    ]
    return "".join(lines).encode()


_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


async def _copy_events(cur: psycopg.AsyncCursor[Any], events: Sequence[EventRecord]) -> int:
    """COPY the events into a temporary table (one buffer), then INSERT ... ON CONFLICT DO
    NOTHING (re-deliveries are stored once)."""
    await cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS events_in "
        "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    async with cur.copy(f"COPY events_in ({_EVENT_COLUMNS}) FROM STDIN") as copy:
        await copy.write(copy_text(events))
    await cur.execute(
        f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM events_in "  # noqa: S608
        "ORDER BY gateway, session, seq ON CONFLICT DO NOTHING"
    )
    return max(cur.rowcount, 0)


async def store_batch(conn: Conn, batch: Batch) -> StoreResult:
    """Store a batch in one transaction (idempotent); sessions' high-water marks follow, and
    :data:`NOTIFY_CHANNEL` is notified on commit. Rows are written table by table in key
    order, so that collectors storing overlapping batches at once never deadlock."""
    events_inserted = results_inserted = states_inserted = 0
    async with conn.transaction(), conn.cursor() as cur:
        if batch.events:
            events_inserted = await _copy_events(cur, batch.events)
        if batch.command_results:
            await cur.executemany(
                "INSERT INTO command_results (gateway, digest, session, seq, ts, pump_id, "
                "command_id, phase, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [
                    (
                        r.gateway,
                        r.digest,
                        r.session,
                        r.seq,
                        r.ts,
                        r.pump_id,
                        r.command_id,
                        r.phase,
                        Jsonb(r.data),
                    )
                    for r in sorted(batch.command_results, key=lambda r: (r.gateway, r.digest))
                ],
            )
            results_inserted = max(cur.rowcount, 0)
        if batch.pump_states:
            await cur.executemany(
                "INSERT INTO pump_states (gateway, pump_id, digest, session, seq, ts, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (s.gateway, s.pump_id, s.digest, s.session, s.seq, s.ts, Jsonb(s.data))
                    for s in sorted(
                        batch.pump_states, key=lambda s: (s.gateway, s.pump_id, s.digest)
                    )
                ],
            )
            states_inserted = max(cur.rowcount, 0)
            await cur.executemany(
                _UPSERT_LATEST,
                [
                    (s.gateway, s.pump_id, s.session, s.seq, s.ts, Jsonb(s.data))
                    for s in sorted(batch.pump_states, key=lambda s: (s.gateway, s.pump_id))
                ],
            )
        # one pass over the gateways rows, in key order (concurrent batches lock rows in the
        # same order: no deadlock)
        writes = sorted(
            [(i.gateway, 0, n) for n, i in enumerate(batch.infos)]
            + [(b.gateway, 1, n) for n, b in enumerate(batch.bridge_states)]
        )
        for _gateway, kind, n in writes:
            if kind == 0:
                info = batch.infos[n]
                await cur.execute(
                    _UPSERT_INFO, (info.gateway, info.session, Jsonb(info.data), info.seq, info.ts)
                )
            else:
                state = batch.bridge_states[n]
                await cur.execute(_UPSERT_BRIDGE_STATE, (state.gateway, state.state))
        marks = sorted(batch.high_waters().items())
        if marks:
            await cur.executemany(_UPSERT_SESSION, [(g, s, hw) for (g, s), hw in marks])
        await cur.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return StoreResult(
        events_inserted=events_inserted,
        events_duplicate=len(batch.events) - events_inserted,
        command_results_inserted=results_inserted,
        pump_states_inserted=states_inserted,
        sessions=tuple(key for key, _ in marks),
    )


async def store_batch_isolating(conn: Conn, batch: Batch) -> tuple[StoreResult, list[str]]:
    """:func:`store_batch`; when PostgreSQL refuses the batch's data (``DataError``), store
    its records one by one instead, so that one bad record cannot block the others (and,
    since nothing is acknowledged before it is stored, be redelivered forever). Returns the
    totals and one message per record refused."""
    try:
        return await store_batch(conn, batch), []
    except psycopg.DataError:
        pass
    refused: list[str] = []
    inserted = duplicate = results = states = 0
    sessions: set[tuple[str, str]] = set()
    singles: list[Batch] = [
        *(Batch(events=[r]) for r in batch.events),
        *(Batch(command_results=[r]) for r in batch.command_results),
        *(Batch(pump_states=[r]) for r in batch.pump_states),
        *(Batch(infos=[r]) for r in batch.infos),
        *(Batch(bridge_states=[r]) for r in batch.bridge_states),
    ]
    for single in singles:
        try:
            one = await store_batch(conn, single)
        except psycopg.DataError as exc:
            refused.append(f"{single.describe()}: {str(exc).strip()[:200]}")
            continue
        inserted += one.events_inserted
        duplicate += one.events_duplicate
        results += one.command_results_inserted
        states += one.pump_states_inserted
        sessions.update(one.sessions)
    total = StoreResult(inserted, duplicate, results, states, tuple(sorted(sessions)))
    return total, refused


# -- reading ---------------------------------------------------------------------------------


class GapStatus(enum.StrEnum):
    """``open``: being backfilled; ``permanent``: the gateway no longer has these events."""

    OPEN = "open"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing seqs ``from_seq..to_seq`` (inclusive) of one gateway session."""

    gateway: str
    session: str
    from_seq: int
    to_seq: int
    status: GapStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """Completeness of one gateway session."""

    gateway: str
    session: str
    high_water: int  # highest seq known to exist
    contiguous_upto: int  # 1..contiguous_upto all held or recorded as permanent gaps
    events: int  # events held
    first_seen: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class GatewaySummary:
    """One gateway as the fleet page lists it."""

    gateway: str
    session: str | None
    bridge_state: str | None  # online | offline | None (never seen)
    last_seen: datetime
    info: JsonObject | None  # the data of its latest bridge/info, as stored (jsonb)
    last_seq: int  # high-water mark of the current session (0: none)
    open_gaps: int
    permanent_gaps: int
    missing_seqs: int  # seqs in open + permanent gaps of the current session
    active_alarms: int  # alarms listed in the latest states of its pumps


@dataclass(frozen=True, slots=True)
class PumpState:
    """The latest ``pump.state`` data of one pump."""

    gateway: str
    pump_id: str
    session: str
    seq: int
    ts: datetime
    data: JsonObject  # as published and stored (jsonb); the fleet page reads what it shows


def _gap(row: Sequence[Any]) -> Gap:
    return Gap(row[0], row[1], row[2], row[3], GapStatus(row[4]), row[5], row[6], row[7])


_GAP_COLUMNS = "gateway, session, from_seq, to_seq, status, attempts, next_attempt_at, last_error"


async def list_gaps(
    conn: Conn, *, gateway: str | None = None, status: GapStatus | None = None
) -> list[Gap]:
    """Gaps by gateway, session, from_seq; optionally of one gateway or status."""
    cur = await conn.execute(
        f"SELECT {_GAP_COLUMNS} FROM gaps "  # noqa: S608
        "WHERE (%(g)s::text IS NULL OR gateway = %(g)s) "
        "AND (%(s)s::text IS NULL OR status = %(s)s) "
        "ORDER BY gateway, session, from_seq",
        {"g": gateway, "s": None if status is None else status.value},
    )
    return [_gap(row) for row in await cur.fetchall()]


async def list_sessions(conn: Conn, *, gateway: str | None = None) -> list[SessionSummary]:
    """Every gateway session with its completeness and event count."""
    cur = await conn.execute(
        "SELECT s.gateway, s.session, s.high_water, s.contiguous_upto, "
        "(SELECT count(*) FROM events e WHERE e.gateway = s.gateway AND e.session = s.session), "
        "s.first_seen, s.updated_at FROM sessions s "
        "WHERE %(g)s::text IS NULL OR s.gateway = %(g)s ORDER BY s.gateway, s.first_seen",
        {"g": gateway},
    )
    return [SessionSummary(*row) for row in await cur.fetchall()]


async def list_gateways(conn: Conn) -> list[GatewaySummary]:
    """Every gateway seen (by bridge/info, bridge/state or any envelope), by id."""
    cur = await conn.execute(
        """
        WITH ids AS (SELECT gateway FROM gateways UNION SELECT gateway FROM sessions),
        current AS (
            SELECT DISTINCT ON (i.gateway) i.gateway, coalesce(g.session, s.session) AS session
            FROM ids i LEFT JOIN gateways g USING (gateway)
            LEFT JOIN sessions s ON s.gateway = i.gateway
            ORDER BY i.gateway, (s.session = g.session) DESC NULLS LAST, s.updated_at DESC
        )
        SELECT c.gateway, c.session, g.bridge_state,
               greatest(g.last_seen, (SELECT max(updated_at) FROM sessions s
                                      WHERE s.gateway = c.gateway)),
               g.info,
               coalesce((SELECT high_water FROM sessions s
                         WHERE s.gateway = c.gateway AND s.session = c.session), 0),
               (SELECT count(*) FROM gaps p WHERE p.gateway = c.gateway AND p.status = 'open'),
               (SELECT count(*) FROM gaps p
                WHERE p.gateway = c.gateway AND p.status = 'permanent'),
               coalesce((SELECT sum(to_seq - from_seq + 1) FROM gaps p
                         WHERE p.gateway = c.gateway AND p.session = c.session), 0),
               coalesce((SELECT sum(jsonb_array_length(coalesce(l.data -> 'alarms', '[]')))
                         FROM pump_states_latest l WHERE l.gateway = c.gateway
                         AND jsonb_typeof(coalesce(l.data -> 'alarms', '[]')) = 'array'), 0)
        FROM current c LEFT JOIN gateways g USING (gateway)
        ORDER BY c.gateway
        """
    )
    return [
        GatewaySummary(
            gateway=row[0],
            session=row[1],
            bridge_state=row[2],
            last_seen=row[3],
            info=row[4],
            last_seq=int(row[5]),
            open_gaps=int(row[6]),
            permanent_gaps=int(row[7]),
            missing_seqs=int(row[8]),
            active_alarms=int(row[9]),
        )
        for row in await cur.fetchall()
    ]


async def latest_pump_states(conn: Conn, *, gateway: str | None = None) -> list[PumpState]:
    """The latest state of every pump (of one gateway), by gateway and pump id."""
    cur = await conn.execute(
        "SELECT gateway, pump_id, session, seq, ts, data FROM pump_states_latest "
        "WHERE %(g)s::text IS NULL OR gateway = %(g)s ORDER BY gateway, pump_id",
        {"g": gateway},
    )
    return [PumpState(*row) for row in await cur.fetchall()]


async def iter_events(
    conn: Conn,
    *,
    gateway: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Sequence[str] | None = None,
) -> AsyncIterator[EventRecord]:
    """Events with ``since <= ts < until`` (either optional), optionally of one gateway and
    some types, ordered by ts then (gateway, session, seq); streamed with a server-side cursor
    in a transaction of its own (a savepoint inside the caller's)."""
    name = f"fleet_iter_events_{next(_cursor_names)}"
    async with conn.transaction(), conn.cursor(name=name) as cur:
        await cur.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events "  # noqa: S608
            "WHERE (%(g)s::text IS NULL OR gateway = %(g)s) "
            "AND (%(since)s::timestamptz IS NULL OR ts >= %(since)s) "
            "AND (%(until)s::timestamptz IS NULL OR ts < %(until)s) "
            "AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s)) "
            "ORDER BY ts, gateway, session, seq",
            {
                "g": gateway,
                "since": since,
                "until": until,
                "types": None if types is None else list(types),
            },
        )
        async for row in cur:
            yield EventRecord(*row)


async def iter_command_results(
    conn: Conn,
    *,
    gateway: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[CommandResultRecord]:
    """Command results with ``since <= ts < until`` (either optional), optionally of one
    gateway, ordered by ts then (gateway, session, seq); streamed like :func:`iter_events`."""
    name = f"fleet_iter_results_{next(_cursor_names)}"
    async with conn.transaction(), conn.cursor(name=name) as cur:
        await cur.execute(
            "SELECT gateway, session, seq, ts, pump_id, command_id, phase, data, digest "
            "FROM command_results "
            "WHERE (%(g)s::text IS NULL OR gateway = %(g)s) "
            "AND (%(since)s::timestamptz IS NULL OR ts >= %(since)s) "
            "AND (%(until)s::timestamptz IS NULL OR ts < %(until)s) "
            "ORDER BY ts, gateway, session, seq, digest",
            {"g": gateway, "since": since, "until": until},
        )
        async for row in cur:
            yield CommandResultRecord(*row)


async def held_seq_ranges(conn: Conn, gateway: str, session: str) -> list[tuple[int, int]]:
    """The seqs held for a session as inclusive, sorted, disjoint ranges."""
    cur = await conn.execute(
        """
        SELECT min(seq), max(seq) FROM (
            SELECT seq, seq - row_number() OVER (ORDER BY seq) AS grp
            FROM events WHERE gateway = %s AND session = %s
        ) t GROUP BY grp ORDER BY 1
        """,
        (gateway, session),
    )
    return [(int(lo), int(hi)) for lo, hi in await cur.fetchall()]
