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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from daemon.pharmacy.report import ReportError, event_facts, override_fact
from daemon.pharmacy.report_model import (
    CATCH_WINDOW,
    TOTAL,
    Accepted,
    Fact,
    Judged,
    ProgramSeen,
    RateChanged,
    Report,
    Window,
    merge,
)
from daemon.timefmt import format_ts, parse_ts

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


@dataclass(frozen=True)
class StoredRow:
    """One row of the stream: a state (``src`` 0), a command result (1) or an event (2)."""

    gateway: str
    ts: datetime
    src: int
    seq: int
    pump_id: str
    what: str | None
    data: dict[str, Any]


@dataclass
class _GatewayFacts:
    """Turns one gateway's stored rows into facts (remembers which commands were judged and
    accepted, to derive what a missed result would have said)."""

    known: set[str] = field(default_factory=set)  # answered or judged: nothing to derive
    accepted: set[str] = field(default_factory=set)

    def facts(self, row: StoredRow) -> list[Fact]:
        ts = format_ts(row.ts)
        pump, data = row.pump_id, row.data
        if row.src == 0:
            if data.get("drug") is None or data.get("profile") is None:
                return []
            return [ProgramSeen(pump, str(data["drug"]), str(data["profile"]))]
        if row.src == 1:
            return self._result(ts, pump, row.what, data)
        return self._event(ts, pump, row.what, data)

    def _result(self, ts: str, pump: str, phase: str | None, data: dict[str, Any]) -> list[Fact]:
        command_id = data.get("id")
        if not isinstance(command_id, str):
            return []
        out: list[Fact] = []
        self.known.add(command_id)
        verdict = data.get("verdict")
        if isinstance(verdict, dict):
            out.append(Judged(ts, pump, command_id, verdict))
        if phase == "accepted" and command_id not in self.accepted:
            self.accepted.add(command_id)
            out.append(Accepted(ts, pump, command_id))
        return out

    def _event(self, ts: str, pump: str, kind: str | None, data: dict[str, Any]) -> list[Fact]:
        command_id = data.get("command_id")
        if kind == "command_rejected" and isinstance(command_id, str):
            return self._derived(ts, pump, command_id, data.get("verdict") or {"verdict": "reject"})
        if kind == "override_accepted" and isinstance(command_id, str):
            confirm = {"verdict": "confirm", "findings": data.get("findings") or []}
            return [*self._derived(ts, pump, command_id, confirm), override_fact(ts, pump, data)]
        if kind == "rate_changed" and isinstance(command_id, str):
            out = self._derived(ts, pump, command_id, {"verdict": "accept"})
            if command_id not in self.accepted:
                self.accepted.add(command_id)
                out.append(Accepted(ts, pump, command_id))
            return [*out, RateChanged(ts, pump, gated=True)]
        return event_facts(ts, pump, data)

    def _derived(self, ts: str, pump: str, command_id: str, verdict: dict[str, Any]) -> list[Fact]:
        if command_id in self.known:
            return []
        self.known.add(command_id)
        return [Judged(ts, pump, command_id, verdict)]


@dataclass(frozen=True)
class FleetReport:
    """The hospital's total and each gateway's own report (by gateway id)."""

    total: Report
    gateways: dict[str, Report]

    def to_dict(self, *, source: str, generated_at: datetime) -> dict[str, Any]:
        """The journal report's JSON, plus ``gateways``: each one's period and summary."""
        out = self.total.to_dict(journal=source, generated_at=generated_at)
        out["gateways"] = [
            {
                "gateway": gateway,
                "first_row": part.first_ts,
                "last_row": part.last_ts,
                "rows_read": part.rows_read,
                "summary": part.rows(),
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
            yield StoredRow(gateway, ts, src, seq, pump_id, what, data)


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
        if row.src != 0:
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


def fleet_rows(fleet: FleetReport) -> list[dict[str, Any]]:
    """The CSV rows: each gateway's summary (its ``(all)`` last), then the hospital's."""
    out = [
        {"gateway": gateway, **row}
        for gateway, part in sorted(fleet.gateways.items())
        for row in part.rows()
    ]
    return out + [{"gateway": TOTAL, **row} for row in fleet.total.rows()]


def fleet_report(
    dsn: str, window: Window, gateways: Sequence[str] | None, *, generated_at: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
    return fleet.to_dict(source=source, generated_at=generated_at), fleet_rows(fleet)
