"""Completeness bookkeeping in the store: find missing seq ranges, claim them for backfill,
record the outcome. Safe with several collectors: a session's refresh holds its ``sessions``
row lock, and gaps are claimed with ``FOR UPDATE SKIP LOCKED``.

A gap found now is first due after ``grace`` (events of a shared-subscription group arrive
at different collectors, and a broker's outbox replay may still be under way), then retried
with exponential backoff capped at ``cap``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from daemon.fleet.store import _GAP_COLUMNS, NOTIFY_CHANNEL, Conn, Gap, GapStatus, _gap

#: a gap is requested only once it has lasted this long (the live stream may still fill it)
DEFAULT_GRACE = timedelta(seconds=2)


async def missing_ranges(
    conn: Conn, gateway: str, session: str, after: int, high_water: int
) -> list[tuple[int, int]]:
    """Inclusive ranges of seqs in ``after+1 .. high_water`` not held in ``events``."""
    cur = await conn.execute(
        """
        WITH held AS (
            SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev FROM events
            WHERE gateway = %(g)s AND session = %(s)s AND seq > %(after)s AND seq <= %(hw)s
        ), tail AS (SELECT coalesce(max(seq), %(after)s) AS last FROM held)
        SELECT coalesce(prev, %(after)s) + 1, seq - 1 FROM held
        WHERE seq > coalesce(prev, %(after)s) + 1
        UNION ALL
        SELECT last + 1, %(hw)s FROM tail WHERE last < %(hw)s
        ORDER BY 1
        """,
        {"g": gateway, "s": session, "after": after, "hw": high_water},
    )
    return [(int(lo), int(hi)) for lo, hi in await cur.fetchall()]


def _subtract(
    ranges: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``ranges`` minus ``holes`` (both sorted, inclusive, disjoint)."""
    out: list[tuple[int, int]] = []
    holes = sorted(holes)
    for lo, hi in ranges:
        start = lo
        for h_lo, h_hi in holes:
            if h_hi < start or h_lo > hi:
                continue
            if h_lo > start:
                out.append((start, h_lo - 1))
            start = max(start, h_hi + 1)
        if start <= hi:
            out.append((start, hi))
    return out


@dataclass(frozen=True)
class SessionCheck:
    """What :func:`check_session` found: the open ranges, and ``contiguous_upto`` (every seq
    up to it is held or permanently missing)."""

    open_ranges: list[tuple[int, int]]
    contiguous_upto: int


async def refresh_session(
    conn: Conn, gateway: str, session: str, *, grace: timedelta = DEFAULT_GRACE
) -> list[tuple[int, int]]:
    """Recompute one session's open gaps from what ``events`` holds (one transaction):
    new ranges become open gaps (due after ``grace``), filled ones are deleted, partly
    filled ones shrink; ``contiguous_upto`` advances. Returns the open ranges."""
    return (await check_session(conn, gateway, session, grace=grace)).open_ranges


async def check_session(
    conn: Conn, gateway: str, session: str, *, grace: timedelta = DEFAULT_GRACE
) -> SessionCheck:
    """:func:`refresh_session`, returning ``contiguous_upto`` too."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT high_water, contiguous_upto FROM sessions "
            "WHERE gateway = %s AND session = %s FOR UPDATE",
            (gateway, session),
        )
        row = await cur.fetchone()
        if row is None:
            return SessionCheck([], 0)
        high_water, contiguous = int(row[0]), int(row[1])
        missing = await missing_ranges(conn, gateway, session, contiguous, high_water)
        cur = await conn.execute(
            "SELECT from_seq, to_seq FROM gaps WHERE gateway = %s AND session = %s "
            "AND status = 'permanent' ORDER BY from_seq",
            (gateway, session),
        )
        permanent = [(int(lo), int(hi)) for lo, hi in await cur.fetchall()]
        open_ranges = _subtract(missing, permanent)
        await conn.execute(
            "DELETE FROM gaps WHERE gateway = %s AND session = %s AND status = 'open' "
            "AND NOT (from_seq = ANY(%s))",
            (gateway, session, [lo for lo, _ in open_ranges]),
        )
        async with conn.cursor() as ins:
            await ins.executemany(
                "INSERT INTO gaps (gateway, session, from_seq, to_seq, next_attempt_at) "
                "VALUES (%s, %s, %s, %s, now() + %s) ON CONFLICT (gateway, session, from_seq) "
                "DO UPDATE SET to_seq = excluded.to_seq, updated_at = now() "
                "WHERE gaps.to_seq <> excluded.to_seq",
                [(gateway, session, lo, hi, grace) for lo, hi in open_ranges],
            )
        upto = open_ranges[0][0] - 1 if open_ranges else high_water
        await conn.execute(
            "UPDATE sessions SET contiguous_upto = %s, updated_at = now() "
            "WHERE gateway = %s AND session = %s AND contiguous_upto <> %s",
            (upto, gateway, session, upto),
        )
        await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return SessionCheck(open_ranges, upto)


async def claim_due_gaps(
    conn: Conn,
    *,
    limit: int = 50,
    base: timedelta = timedelta(seconds=2),
    cap: timedelta = timedelta(seconds=60),
) -> list[Gap]:
    """Take up to ``limit`` open gaps whose time has come and push their next attempt back
    (``base * 2**attempts``, at most ``cap``), so no other collector requests them meanwhile.
    Returns them as they were claimed (``attempts`` already counts this one)."""
    async with conn.transaction():
        cur = await conn.execute(
            f"""
            UPDATE gaps SET attempts = attempts + 1, updated_at = now(),
                next_attempt_at = now() + least(%(cap)s, %(base)s * power(2, least(attempts, 20)))
            WHERE (gateway, session, from_seq) IN (
                SELECT gateway, session, from_seq FROM gaps
                WHERE status = 'open' AND next_attempt_at <= now()
                ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
            RETURNING {_GAP_COLUMNS}
            """,  # noqa: S608
            {"cap": cap, "base": base, "limit": limit},
        )
        return sorted((_gap(row) for row in await cur.fetchall()), key=lambda g: g.from_seq)


async def record_gap_error(
    conn: Conn, gateway: str, session: str, from_seq: int, error: str
) -> None:
    """Note why the last backfill attempt of an open gap failed (it stays open)."""
    await conn.execute(
        "UPDATE gaps SET last_error = %s, updated_at = now() "
        "WHERE gateway = %s AND session = %s AND from_seq = %s AND status = 'open'",
        (error[:500], gateway, session, from_seq),
    )


async def mark_permanent(
    conn: Conn,
    gateway: str,
    session: str,
    from_seq: int,
    to_seq: int,
    *,
    reason: str,
    grace: timedelta = timedelta(0),
) -> None:
    """Record ``from_seq..to_seq`` as permanently missing (the gateway no longer has them):
    never requested again, shown as a gap, counted as settled for ``contiguous_upto``. Open gaps
    overlapping it are trimmed at once; what remains of them is due after ``grace``."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM gaps WHERE gateway = %s AND session = %s AND status = 'open' "
            "AND from_seq >= %s AND from_seq <= %s",
            (gateway, session, from_seq, to_seq),
        )
        await conn.execute(
            "INSERT INTO gaps (gateway, session, from_seq, to_seq, status, last_error) "
            "VALUES (%s, %s, %s, %s, 'permanent', %s) ON CONFLICT (gateway, session, from_seq) "
            "DO UPDATE SET to_seq = greatest(gaps.to_seq, excluded.to_seq), status = 'permanent', "
            "last_error = excluded.last_error, updated_at = now()",
            (gateway, session, from_seq, to_seq, reason[:500]),
        )
    await refresh_session(conn, gateway, session, grace=grace)


__all__ = [
    "DEFAULT_GRACE",
    "Gap",
    "GapStatus",
    "SessionCheck",
    "check_session",
    "claim_due_gaps",
    "mark_permanent",
    "missing_ranges",
    "record_gap_error",
    "refresh_session",
]
