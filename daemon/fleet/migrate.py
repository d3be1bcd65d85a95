"""A small versioned schema runner: plain SQL files, one table of applied versions.

``daemon/fleet/migrations/NNNN_name.sql`` are applied in version order, each at most once, all
pending ones in one transaction that first takes a transaction-scoped advisory lock, so two
collectors starting together serialise: the second one waits, then finds nothing to do.

Why not alembic: the fleet store has no ORM models to autogenerate from and no downgrades to
maintain; the schema is a handful of plain SQL files read by operators and DBAs as they are,
and a table of applied versions is all the bookkeeping it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

#: key of the advisory lock held while migrating (any constant unique to this application)
MIGRATION_LOCK = 0x1F05_0D20

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``version`` from its ``NNNN_`` prefix, ``name`` from the rest."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, by version."""
    found = []
    for entry in resources.files("daemon.fleet.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    """The schema version this code expects."""
    return migrations()[-1].version


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
    """Bring the database to :func:`latest_version`; return the migrations applied now.

    Runs in one transaction (all or nothing) under :data:`MIGRATION_LOCK`."""
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(_CREATE_VERSIONS)
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(row[0]) for row in await cur.fetchall()}
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration)
    return applied_now
