"""Recent history from the journal, as the HTTP API serves it (``/api/events``, ``/api/history``).

A dashboard or ``watch`` opened late asks here for what happened before it connected: the pump
events of a window (the same ``data`` objects as on ``pump/<id>/event``) and each pump's rate and
dose over the window (the points a chart draws, starting with the value the pump had when the
window opened). Every read goes through :class:`~daemon.journal.AsyncJournal` (its one worker
thread, never the event loop) and is bounded twice: the window is at most :data:`MAX_WINDOW` and
each answer holds at most :data:`MAX_ROWS` rows (per pump for the series), through the journal's
(pump, event type, time) index.

Query parameters (all optional; anything else is refused, naming it):

- ``since``: a duration back from now (``90s``, ``30m``, ``2h``) or an RFC 3339 time with a zone;
  default ``30m``, at most 24 h back, not in the future;
- ``pump``: one configured pump id; default every pump;
- ``limit`` (``/api/events`` only): 1 to :data:`MAX_ROWS`, default :data:`DEFAULT_ROWS`; the
  newest rows are kept and ``truncated`` says that older ones were left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from daemon.base.errors import PayloadError
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity, optional_json, optional_quantity
from daemon.base.timefmt import format_ts, parse_ts
from daemon.journal.records import JournalRow
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal
from protocol.errors import InfusiondError

DEFAULT_WINDOW = timedelta(minutes=30)
MAX_WINDOW = timedelta(hours=24)
DEFAULT_ROWS = 200
MAX_ROWS = 1000

EVENTS_SCHEMA = "infusiond.api.events/1"
HISTORY_SCHEMA = "infusiond.api.history/1"

#: every ``pump.event`` type (docs/schemas/infusiond.pump.event-1.json; a test keeps them equal)
EVENT_TYPES = (
    "delivery_started",
    "delivery_stopped",
    "rate_changed",
    "program_changed",
    "alarm_raised",
    "alarm_cleared",
    "connection_changed",
    "out_of_library_observed",
    "command_rejected",
    "override_accepted",
    "volume_cleared",
    "library_changed",
)
#: the events that set a pump's rate (and so its dose) or make it unknown
SERIES_TYPES = ("rate_changed", "delivery_started", "delivery_stopped", "connection_changed")

_DURATION = re.compile(r"^(\d{1,6})(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}

DoseObj = Callable[[str, float], JsonObject | None]
"""(pump id, rate mL/h) -> the dose object under the pump's current program (None: unknown);
the gateway's, given as the JSON it publishes, read here with :meth:`Quantity.from_json`."""


class HistoryQueryError(InfusiondError):
    """A bad history query; ``by_parameter`` holds every ``(parameter, message)`` found (and
    ``problems`` the same as sentences, like every error of the project)."""

    def __init__(self, by_parameter: Sequence[tuple[str, str]]) -> None:
        super().__init__(*(f"{name}: {message}" for name, message in by_parameter))
        self.by_parameter = tuple(by_parameter)


class JournalNotReady(InfusiondError):
    """The gateway has not opened its journal yet (the API answers 503)."""


@dataclass(frozen=True, slots=True)
class Query:
    """A checked history query: the window ``[since, until]``, the pumps and the row cap."""

    since: datetime
    until: datetime
    pumps: tuple[str, ...]
    limit: int


def _since(text: str, now: datetime) -> datetime:
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        return parse_ts(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither a duration (90s, 30m, 2h) nor an RFC 3339 time with a zone"
        ) from None


def parse_query(
    params: Iterable[tuple[str, str]],
    *,
    now: datetime,
    pumps: Sequence[str],
    with_limit: bool,
) -> Query:
    """Check the query parameters (pairs, in order); :class:`HistoryQueryError` lists every
    problem, each naming its parameter and the limit it broke."""
    allowed = {"since", "pump", "limit"} if with_limit else {"since", "pump"}
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in allowed:
            problems.append((name, f"unknown parameter (known: {', '.join(sorted(allowed))})"))
        elif name in seen:
            problems.append((name, "given more than once"))
        else:
            seen[name] = value
    since = now - DEFAULT_WINDOW
    if "since" in seen:
        try:
            since = _since(seen["since"], now)
        except ValueError as exc:
            problems.append(("since", str(exc)))
        else:
            if since > now:
                problems.append(("since", f"{format_ts(since)} is in the future"))
            elif now - since > MAX_WINDOW:
                problems.append(("since", "the window is over the maximum of 24 h"))
    chosen = tuple(pumps)
    if "pump" in seen:
        if seen["pump"] in pumps:
            chosen = (seen["pump"],)
        else:
            known = ", ".join(pumps) or "none"
            problems.append(("pump", f"{seen['pump'][:64]!r} is not a pump here (known: {known})"))
    limit = DEFAULT_ROWS
    if "limit" in seen:
        text = seen["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ROWS):
            problems.append(("limit", f"{text[:20]!r} is not a whole number from 1 to {MAX_ROWS}"))
        else:
            limit = int(text)
    if problems:
        raise HistoryQueryError(problems)
    return Query(since=since, until=now, pumps=chosen, limit=limit)


def _event_of(row: JournalRow) -> Mapping[str, object]:
    """The event object of an EVENT row (``PayloadError`` naming the row when it is not one)."""
    event = row.payload.get("event", {})
    if not isinstance(event, Mapping):
        raise PayloadError(f"journal row {row.n}: event: expected an object, got {event!r:.60}")
    return event


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One item of ``/api/events``: the journal row's number, time and pump, the event's seq
    and its ``data`` object exactly as published on ``pump/<id>/event``."""

    n: int
    ts: str
    pump_id: str | None
    seq: int | None
    data: JsonObject

    @classmethod
    def from_row(cls, row: JournalRow) -> HistoryEvent:
        """The item an EVENT row gives; ``PayloadError`` naming the row and the field."""
        seq = row.payload.get("seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise PayloadError(f"journal row {row.n}: seq: expected an integer, got {seq!r:.60}")
        return cls(row.n, row.ts, row.pump_id, seq, dict(_event_of(row)))

    def to_json(self) -> JsonObject:
        return {
            "n": self.n,
            "ts": self.ts,
            "pump_id": self.pump_id,
            "seq": self.seq,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One point of a pump's series: the rate and dose an event left it at (None: unknown)
    and ``why`` (the event type, or ``before`` for the value carried into the window)."""

    ts: str
    rate: Quantity | None
    dose: Quantity | None
    why: str

    def to_json(self) -> JsonObject:
        return {
            "ts": self.ts,
            "rate": optional_json(self.rate),
            "dose": optional_json(self.dose),
            "why": self.why,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> HistoryPoint:
        """A point as ``/api/history`` serves it (what a client reads back)."""
        ts, why = data.get("ts"), data.get("why")
        if not isinstance(ts, str) or not isinstance(why, str):
            raise PayloadError("history point: ts and why must be strings")
        return cls(
            ts,
            optional_quantity(data.get("rate"), where="history point rate"),
            optional_quantity(data.get("dose"), where="history point dose"),
            why,
        )


def _point(row: JournalRow, dose_obj: DoseObj | None, program_n: int) -> HistoryPoint | None:
    """The rate and dose an event left the pump at (None: an event that sets neither)."""
    event = _event_of(row)
    kind = event.get("type")
    where = f"journal row {row.n}: event"
    rate: Quantity | None
    dose: Quantity | None = None
    if kind == "rate_changed":
        to = event.get("to") or {}
        if not isinstance(to, Mapping):
            raise PayloadError(f"{where}.to: expected an object, got {to!r:.60}")
        rate = optional_quantity(to.get("rate"), where=f"{where}.to.rate")
        dose = optional_quantity(to.get("dose"), where=f"{where}.to.dose")
    elif kind == "delivery_started" or (
        kind == "connection_changed" and event.get("connection") == "online"
    ):
        if not event.get("rate"):
            return None  # (re)connected without a reading: the next poll's events say more
        rate = Quantity.from_json(event["rate"], where=f"{where}.rate")
        # a dose is derived only under the program still running (none changed since)
        if dose_obj is not None and row.n > program_n and row.pump_id is not None:
            dose = optional_quantity(dose_obj(row.pump_id, rate.value), where="program dose")
    elif kind == "delivery_stopped":
        rate = Quantity.rate(0.0)
        if dose_obj is not None and row.pump_id is not None:
            dose = optional_quantity(dose_obj(row.pump_id, 0.0), where="program dose")
    elif kind == "connection_changed":
        rate = None  # offline or connecting: nothing is known until it answers again
    else:
        return None
    return HistoryPoint(row.ts, rate, dose, str(kind))


@dataclass(frozen=True, slots=True)
class PumpSeries:
    """One pump's points over the window; ``truncated``: older rows were left out."""

    points: tuple[HistoryPoint, ...]
    truncated: bool

    def to_json(self) -> JsonObject:
        return {"points": [p.to_json() for p in self.points], "truncated": self.truncated}


@dataclass(frozen=True)
class History:
    """Reads the API's answers from a gateway's journal.

    ``journal`` returns the open journal (None before the gateway opened it: answers are then
    :class:`JournalNotReady`); ``pumps`` are the configured pump ids; ``dose_obj`` turns a rate
    into the dose under the pump's current program (a started delivery journals only its rate).
    """

    gateway: str
    journal: Callable[[], AsyncJournal | None]
    pumps: Callable[[], Sequence[str]]
    dose_obj: DoseObj | None = None

    def _open(self) -> AsyncJournal:
        journal = self.journal()
        if journal is None:
            raise JournalNotReady("the journal is not open yet: try again in a few seconds")
        return journal

    def _envelope(
        self, schema: str, journal: AsyncJournal, now: datetime, data: JsonObject
    ) -> JsonObject:
        return {
            "schema": schema,
            "gateway": self.gateway,
            "session": journal.session,
            "ts": format_ts(now),
            "data": data,
        }

    async def events(self, params: Iterable[tuple[str, str]], *, now: datetime) -> JsonObject:
        """``/api/events``: pump events of the window, oldest first, the newest ``limit``."""
        query = parse_query(params, now=now, pumps=self.pumps(), with_limit=True)
        journal = self._open()
        rows: list[JournalRow] = []
        for pump in query.pumps:
            rows.extend(
                await journal.run(
                    Journal.recent_events,
                    pump,
                    EVENT_TYPES,
                    since=query.since,
                    limit=query.limit + 1,
                )
            )
        rows.sort(key=lambda r: (r.ts, r.n))
        truncated = len(rows) > query.limit
        kept = rows[-query.limit :]
        data = {
            "since": format_ts(query.since),
            "until": format_ts(query.until),
            "pumps": list(query.pumps),
            "limit": query.limit,
            "truncated": truncated,
            "events": [HistoryEvent.from_row(row).to_json() for row in kept],
        }
        return self._envelope(EVENTS_SCHEMA, journal, now, data)

    async def series(self, params: Iterable[tuple[str, str]], *, now: datetime) -> JsonObject:
        """``/api/history``: each pump's rate and dose points over the window, oldest first;
        the first point is the value carried in from before the window (``why: "before"``)."""
        query = parse_query(params, now=now, pumps=self.pumps(), with_limit=False)
        journal = self._open()
        pumps: dict[str, PumpSeries] = {}
        for pump in query.pumps:
            latest = await journal.run(Journal.latest_events, pump, ["program_changed"])
            program_n = latest["program_changed"].n if "program_changed" in latest else 0
            points: list[HistoryPoint] = []
            before = await journal.run(
                Journal.events_before, pump, SERIES_TYPES, before=query.since
            )
            start = None if before is None else _point(before, self.dose_obj, program_n)
            rows = await journal.run(
                Journal.recent_events, pump, SERIES_TYPES, since=query.since, limit=MAX_ROWS + 1
            )
            truncated = len(rows) > MAX_ROWS
            if start is not None and not truncated:
                points.append(replace(start, ts=format_ts(query.since), why="before"))
            for row in rows[-MAX_ROWS:]:
                point = _point(row, self.dose_obj, program_n)
                if point is not None:
                    points.append(point)
            pumps[pump] = PumpSeries(tuple(points), truncated)
        data = {
            "since": format_ts(query.since),
            "until": format_ts(query.until),
            "pumps": {pump: series.to_json() for pump, series in pumps.items()},
        }
        return self._envelope(HISTORY_SCHEMA, journal, now, data)


def problems_document(problems: Iterable[tuple[str, str]]) -> JsonObject:
    """The body of a 400: every problem, each naming its parameter."""
    return {
        "error": "bad_query",
        "problems": [{"parameter": name, "message": message} for name, message in problems],
    }
