"""The CQI report's second source: the fleet store in PostgreSQL (``report --postgres``).

The collector stores what gateways publish, not their journals. What the journal-based report
reads, and where it comes from here (docs/pharmacy-guide.md, "The hospital report"):

- a pump's drug and profile: its ``pump.state`` history (``drug``, ``profile``) and the
  ``program_changed`` / ``library_changed`` events (the journal: its programs row and the
  same events);
- a verdict (once per command id): the first command result carrying one (``rejected``,
  ``needs_confirmation``, ``accepted``). Results are not backfilled (only events are), so a
  result the collector missed is derived from the events, which are complete:
  ``command_rejected`` -> reject, ``override_accepted`` -> confirm, a gated ``rate_changed``
  (with ``command_id``) whose command has no verdict yet -> accept (a confirm never reaches
  the pump without its override event first). Those derived verdicts carry no library
  version;
- an accepted programming (for catches): an ``accepted`` result, else the command's gated
  ``rate_changed``;
- overrides, rate changes, changes outside the library, library changes: the events.

A pump is ``(gateway, pump_id)``: each gateway's rows are read in time order (server-side
cursor, never the whole table in memory) into its own :class:`Report`; the hospital's total
is their :func:`merge`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts, parse_ts
from daemon.pharmacy.report import ReportError, event_facts, override_fact
from daemon.pharmacy.report_facts import (
    Accepted,
    Fact,
    Judged,
    ProgramSeen,
    RateChangeSeen,
    VerdictSeen,
)
from daemon.pharmacy.report_model import (
    CATCH_WINDOW,
    TOTAL,
    Report,
    SummaryRow,
    Window,
    json_rows,
    merge,
)
from protocol.verdict import Outcome

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: how many rows one round trip of the server-side cursor brings
FETCH_ROWS = 2000

_EVENT_TYPES = (
    "program_changed",
    "library_changed",
    "rate_changed",
    "out_of_library_observed",
    "command_rejected",
    "override_accepted",
)
_PHASES = ("rejected", "needs_confirmation", "accepted")

# One time-ordered stream per gateway: states (programs) first, then results, then events at
# the same instant (the journal's order: verdict row, answer, event). Rows before --from are
# read back to the catch window (a rejection pending at --from), and each pump's latest
# state before that (its program).
_STREAM = """
WITH bounds AS (SELECT %(lo)s::timestamptz AS lo, %(hi)s::timestamptz AS hi)
SELECT gateway, ts, 0 AS src, seq, pump_id, NULL::text AS what, data FROM (
    SELECT DISTINCT ON (gateway, pump_id) gateway, ts, seq, pump_id, data
    FROM pump_states, bounds
    WHERE ts < bounds.lo AND (%(gw)s::text[] IS NULL OR gateway = ANY(%(gw)s::text[]))
    ORDER BY gateway, pump_id, ts DESC
) AS before
UNION ALL
SELECT gateway, ts, 0, seq, pump_id, NULL, data FROM pump_states, bounds
WHERE ts >= bounds.lo AND (bounds.hi IS NULL OR ts < bounds.hi)
  AND (%(gw)s::text[] IS NULL OR gateway = ANY(%(gw)s::text[]))
UNION ALL
SELECT gateway, ts, 1, seq, pump_id, phase, data FROM command_results, bounds
WHERE phase = ANY(%(phases)s::text[]) AND ts >= bounds.lo AND (bounds.hi IS NULL OR ts < bounds.hi)
  AND (%(gw)s::text[] IS NULL OR gateway = ANY(%(gw)s::text[]))
UNION ALL
SELECT gateway, ts, 2, seq, pump_id, type, data FROM events, bounds
WHERE type = ANY(%(types)s::text[]) AND ts >= bounds.lo AND (bounds.hi IS NULL OR ts < bounds.hi)
  AND (%(gw)s::text[] IS NULL OR gateway = ANY(%(gw)s::text[]))
ORDER BY gateway, ts, src, seq
"""


class FleetReportError(ReportError):
    """The fleet store cannot be read for the report; the message names the database."""


class Table(enum.IntEnum):
    """Which table a row of the stream comes from (its value orders rows of one instant)."""

    STATE = 0
    RESULT = 1
    EVENT = 2


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of the stream: a state, a command result (``what``: its phase) or an event
    (``what``: its type); ``data`` is the stored JSONB object as published."""

    gateway: str
    ts: datetime
    src: Table
    seq: int
    pump_id: str
    what: str | None
    data: JsonObject

    @property
    def where(self) -> str:
        """The row, for a ``PayloadError``."""
        return f"gateway {self.gateway} {self.src.name.lower()} seq {self.seq} data"


@dataclass
class _GatewayFacts:
    """Turns one gateway's stored rows into facts (remembers which commands were judged and
    accepted, to derive what a missed result would have said)."""

    known: set[str] = field(default_factory=set)  # answered or judged: nothing to derive
    accepted: set[str] = field(default_factory=set)

    def facts(self, row: StoredRow) -> list[Fact]:
        ts = format_ts(row.ts)
        pump, data = row.pump_id, row.data
        if row.src is Table.STATE:
            if data.get("drug") is None or data.get("profile") is None:
                return []
            return [ProgramSeen(pump, str(data["drug"]), str(data["profile"]))]
        if row.src is Table.RESULT:
            return self._result(ts, pump, row)
        return self._event(ts, pump, row)

    def _result(self, ts: str, pump: str, row: StoredRow) -> list[Fact]:
        command_id = row.data.get("id")
        if not isinstance(command_id, str):
            return []  # a result without an id (a refused command) judges nothing
        out: list[Fact] = []
        self.known.add(command_id)
        if row.data.get("verdict") is not None:
            verdict = VerdictSeen.from_json(row.data["verdict"], where=f"{row.where}.verdict")
            out.append(Judged(ts, pump, command_id, verdict))
        if row.what == "accepted" and command_id not in self.accepted:
            self.accepted.add(command_id)
            out.append(Accepted(ts, pump, command_id))
        return out

    def _event(self, ts: str, pump: str, row: StoredRow) -> list[Fact]:
        data, kind, where = row.data, row.what, row.where
        command_id = data.get("command_id")
        if kind == "command_rejected" and isinstance(command_id, str):
            stored = data.get("verdict")
            verdict = (
                VerdictSeen(Outcome.REJECT)
                if not stored
                else VerdictSeen.from_json(stored, where=f"{where}.verdict")
            )
            return self._derived(ts, pump, command_id, verdict)
        if kind == "override_accepted" and isinstance(command_id, str):
            override = override_fact(ts, pump, data, where)
            confirm = VerdictSeen(Outcome.CONFIRM, rules=override.rules)
            return [*self._derived(ts, pump, command_id, confirm), override]
        if kind == "rate_changed" and isinstance(command_id, str):
            out = self._derived(ts, pump, command_id, VerdictSeen(Outcome.ACCEPT))
            if command_id not in self.accepted:
                self.accepted.add(command_id)
                out.append(Accepted(ts, pump, command_id))
            return [*out, RateChangeSeen(ts, pump, gated=True)]
        return event_facts(ts, pump, data, where)

    def _derived(self, ts: str, pump: str, command_id: str, verdict: VerdictSeen) -> list[Fact]:
        if command_id in self.known:
            return []
        self.known.add(command_id)
        return [Judged(ts, pump, command_id, verdict)]


@dataclass(frozen=True)
class FleetReport:
    """The hospital's total and each gateway's own report (by gateway id)."""

    total: Report
    gateways: dict[str, Report]

    def to_json(self, *, source: str, generated_at: datetime) -> JsonObject:
        """The journal report's JSON, plus ``gateways``: each one's period and summary."""
        out = self.total.to_json(journal=source, generated_at=generated_at)
        out["gateways"] = [
            {
                "gateway": gateway,
                "first_row": part.first_ts,
                "last_row": part.last_ts,
                "rows_read": part.rows_read,
                "summary": json_rows(part.rows()),
            }
            for gateway, part in sorted(self.gateways.items())
        ]
        return out


def stream(
    conn: psycopg.Connection[Any], window: Window, gateways: Sequence[str] | None = None
) -> Iterator[StoredRow]:
    """Every row the report needs, per gateway in time order, through a server-side cursor."""
    lo = parse_ts(window.start) - CATCH_WINDOW if window.start else _EPOCH
    params = {
        "lo": lo,
        "hi": parse_ts(window.end) if window.end else None,
        "gw": list(gateways) if gateways else None,
        "phases": list(_PHASES),
        "types": list(_EVENT_TYPES),
    }
    with conn.cursor(name="cqi_report") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(_STREAM, params)
        for gateway, ts, src, seq, pump_id, what, data in cur:
            yield StoredRow(gateway, ts, Table(src), seq, pump_id, what, data)


def read_fleet(
    conn: psycopg.Connection[Any], window: Window, gateways: Sequence[str] | None = None
) -> FleetReport:
    """Feed the stored rows of every (or the named) gateway into one report per gateway."""
    parts: dict[str, Report] = {}
    report: Report | None = None
    facts = _GatewayFacts()
    for row in stream(conn, window, gateways):
        if report is None or report.gateway != row.gateway:
            report = parts[row.gateway] = Report(window=window, gateway=row.gateway)
            facts = _GatewayFacts()
        report.rows_read += 1
        if row.src is not Table.STATE:
            report.mark(format_ts(row.ts))
        for fact in facts.facts(row):
            report.take(fact)
    for name in gateways or ():
        parts.setdefault(name, Report(window=window, gateway=name))
    return FleetReport(merge(parts.values(), window), parts)


def describe(dsn: str) -> str:
    """The database a DSN names, for the report's header (never its password)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise FleetReportError(f"--postgres: not a PostgreSQL connection string: {exc}") from None
    where = info.get("host") or "local socket"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql {info.get('dbname') or '(default database)'} on {where}{port}"


def open_store(dsn: str) -> psycopg.Connection[Any]:
    """A read-only connection to the fleet store (the collector's schema must be there)."""
    what = describe(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=False)
    except psycopg.Error as exc:
        raise FleetReportError(f"--postgres: cannot connect to {what}: {exc}") from None
    conn.read_only = True
    return conn


def fleet_rows(fleet: FleetReport) -> list[SummaryRow]:
    """The CSV rows: each gateway's summary (its ``(all)`` last), then the hospital's."""
    out = [row for gateway, part in sorted(fleet.gateways.items()) for row in part.rows(gateway)]
    return out + fleet.total.rows(TOTAL)


def fleet_report(
    dsn: str, window: Window, gateways: Sequence[str] | None, *, generated_at: datetime
) -> tuple[JsonObject, list[SummaryRow]]:
    """``report --postgres``: the JSON/HTML dict and the CSV rows."""
    source = describe(dsn)
    with open_store(dsn) as conn:
        try:
            fleet = read_fleet(conn, window, gateways)
        except psycopg.errors.UndefinedTable as exc:
            raise FleetReportError(
                f"--postgres: {source} has no fleet store ({exc.diag.message_primary}); "
                "`infusiond fleet collect` creates it"
            ) from None
        except psycopg.Error as exc:
            raise FleetReportError(f"--postgres: reading {source} failed: {exc}") from None
    return fleet.to_json(source=source, generated_at=generated_at), fleet_rows(fleet)
