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

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from daemon.fleet.store import (
    Conn,
    Gap,
    GatewaySummary,
    PumpState,
    latest_pump_states,
    list_gaps,
    list_gateways,
)
from daemon.timefmt import format_ts


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


def _pump(state: PumpState) -> dict[str, Any]:
    data = state.data
    alarms = data.get("alarms")
    return {
        "pump_id": state.pump_id,
        "connection": data.get("connection"),
        "status": data.get("status"),
        "drug": data.get("drug"),
        "alarms": [
            {"code": a.get("code"), "priority": a.get("priority"), "since": a.get("since")}
            for a in (alarms if isinstance(alarms, list) else [])
            if isinstance(a, dict)
        ],
        "ts": format_ts(state.ts),
    }


def _gateway(gw: GatewaySummary, gaps: list[Gap], pumps: list[PumpState]) -> dict[str, Any]:
    current = [g for g in gaps if g.session == gw.session]
    missing = [
        {
            "from": g.from_seq,
            "to": g.to_seq,
            "status": g.status.value,
            "attempts": g.attempts,
            "error": g.last_error,
        }
        for g in current
    ]
    listed = [_pump(p) for p in pumps]
    return {
        "gateway": gw.gateway,
        "state": gw.bridge_state or "unknown",
        "session": gw.session,
        "last_seq": gw.last_seq,
        "last_seen": format_ts(gw.last_seen) if gw.last_seen else None,
        "held": held_ranges(gw.last_seq, [(g.from_seq, g.to_seq) for g in current]),
        "missing": missing,
        "missing_seqs": sum(g.to_seq - g.from_seq + 1 for g in current),
        "other_sessions_gaps": len(gaps) - len(current),
        "active_alarms": sum(len(p["alarms"]) for p in listed),
        "pumps": listed,
    }


async def fleet_overview(conn: Conn, *, now: datetime) -> dict[str, Any]:
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
        "gateways": listed,
        "totals": {
            "gateways": len(listed),
            "online": sum(1 for g in listed if g["state"] == "online"),
            "offline": sum(1 for g in listed if g["state"] == "offline"),
            "missing_seqs": sum(g["missing_seqs"] for g in listed),
            "active_alarms": sum(g["active_alarms"] for g in listed),
        },
    }
