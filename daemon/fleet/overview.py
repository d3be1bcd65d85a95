"""What the fleet page shows (``GET /api/fleet``), read from the fleet store.

Per gateway: ``state`` (``online``/``offline`` from its retained ``bridge/state`` and last
will; ``unknown`` when never received), its current ``session``, ``last_seq`` (the highest
seq known to exist in that session), ``last_seen``, the seqs of that session the store
``held`` and those ``missing`` (each range with its status: ``open`` while the collector is
backfilling it, ``permanent`` when the gateway no longer has it), and every pump's latest
state with its active alarms. ``held`` is ``1..last_seq`` without the missing ranges: what the
collector's completeness tracking knows, without counting a session's rows on every refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts
from daemon.fleet.store import (
    Conn,
    Gap,
    GatewaySummary,
    PumpState,
    latest_pump_states,
    list_gaps,
    list_gateways,
)


def held_ranges(last_seq: int, missing: Iterable[tuple[int, int]]) -> list[list[int]]:
    """``1..last_seq`` without the (inclusive) ``missing`` ranges, as ``[from, to]`` pairs."""
    held: list[list[int]] = []
    at = 1
    for lo, hi in sorted(missing):
        if lo > at:
            held.append([at, min(lo - 1, last_seq)])
        at = max(at, hi + 1)
        if at > last_seq:
            break
    if at <= last_seq:
        held.append([at, last_seq])
    return [r for r in held if r[0] <= r[1]]


def _text(data: Mapping[str, object], key: str) -> str | None:
    """A string field of a stored state; anything else is shown as null: the page shows
    what it can of a state off contract rather than fail for every gateway."""
    value = data.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class AlarmOverview:
    """An active alarm of a pump, as its latest state lists it."""

    code: str | None
    priority: str | None
    since: str | None

    def to_json(self) -> JsonObject:
        return {"code": self.code, "priority": self.priority, "since": self.since}


@dataclass(frozen=True, slots=True)
class PumpOverview:
    """A pump's line on the fleet page, from its latest stored ``pump.state``."""

    pump_id: str
    connection: str | None
    status: str | None
    drug: str | None
    alarms: tuple[AlarmOverview, ...]
    ts: datetime

    @classmethod
    def from_state(cls, state: PumpState) -> PumpOverview:
        """Read the stored state's ``data`` once (alarms that are not objects are left out)."""
        data = state.data
        alarms = data.get("alarms")
        return cls(
            pump_id=state.pump_id,
            connection=_text(data, "connection"),
            status=_text(data, "status"),
            drug=_text(data, "drug"),
            alarms=tuple(
                AlarmOverview(_text(a, "code"), _text(a, "priority"), _text(a, "since"))
                for a in (alarms if isinstance(alarms, list) else [])
                if isinstance(a, Mapping)
            ),
            ts=state.ts,
        )

    def to_json(self) -> JsonObject:
        return {
            "pump_id": self.pump_id,
            "connection": self.connection,
            "status": self.status,
            "drug": self.drug,
            "alarms": [a.to_json() for a in self.alarms],
            "ts": format_ts(self.ts),
        }


@dataclass(frozen=True, slots=True)
class GatewayOverview:
    """One gateway on the fleet page: its state, current session, completeness and pumps."""

    summary: GatewaySummary
    gaps: tuple[Gap, ...]  # of its current session
    other_sessions_gaps: int
    pumps: tuple[PumpOverview, ...]

    @property
    def state(self) -> str:
        """``online``/``offline`` (its retained bridge state), ``unknown`` when never seen."""
        return self.summary.bridge_state or "unknown"

    @property
    def missing_seqs(self) -> int:
        return sum(g.to_seq - g.from_seq + 1 for g in self.gaps)

    @property
    def active_alarms(self) -> int:
        return sum(len(p.alarms) for p in self.pumps)

    def to_json(self) -> JsonObject:
        gw = self.summary
        return {
            "gateway": gw.gateway,
            "state": self.state,
            "session": gw.session,
            "last_seq": gw.last_seq,
            "last_seen": format_ts(gw.last_seen) if gw.last_seen else None,
            "held": held_ranges(gw.last_seq, [(g.from_seq, g.to_seq) for g in self.gaps]),
            "missing": [
                {
                    "from": g.from_seq,
                    "to": g.to_seq,
                    "status": g.status.value,
                    "attempts": g.attempts,
                    "error": g.last_error,
                }
                for g in self.gaps
            ],
            "missing_seqs": self.missing_seqs,
            "other_sessions_gaps": self.other_sessions_gaps,
            "active_alarms": self.active_alarms,
            "pumps": [p.to_json() for p in self.pumps],
        }


def _gateway(gw: GatewaySummary, gaps: list[Gap], pumps: list[PumpState]) -> GatewayOverview:
    current = tuple(g for g in gaps if g.session == gw.session)
    listed = tuple(PumpOverview.from_state(p) for p in pumps)
    return GatewayOverview(gw, current, len(gaps) - len(current), listed)


async def fleet_overview(conn: Conn, *, now: datetime) -> JsonObject:
    """The ``/api/fleet`` document: every gateway, by id."""
    gateways = await list_gateways(conn)
    gaps: dict[str, list[Gap]] = {}
    for gap in await list_gaps(conn):
        gaps.setdefault(gap.gateway, []).append(gap)
    pumps: dict[str, list[PumpState]] = {}
    for state in await latest_pump_states(conn):
        pumps.setdefault(state.gateway, []).append(state)
    listed = [_gateway(gw, gaps.get(gw.gateway, []), pumps.get(gw.gateway, [])) for gw in gateways]
    return {
        "generated_at": format_ts(now),
        "gateways": [g.to_json() for g in listed],
        "totals": {
            "gateways": len(listed),
            "online": sum(1 for g in listed if g.state == "online"),
            "offline": sum(1 for g in listed if g.state == "offline"),
            "missing_seqs": sum(g.missing_seqs for g in listed),
            "active_alarms": sum(g.active_alarms for g in listed),
        },
    }
