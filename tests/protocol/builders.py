"""Request builders for the protocol tests: a clean titration by default, one knob per rule.

The default request (adult-icu norepinephrine 4 ug/mL D5W central, 70 kg, 0.05 -> 0.06
ug/kg/min, MAP 75 / SBP 120 two minutes old, running at the current dose since 5 h ago, no
other channel) has no findings at all, so a test that turns one knob sees only the rule it is
about. ``history=[]`` gives a running infusion without history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from daemon.library_file import load_library
from protocol.engine import evaluate
from protocol.library import DEFAULT_LIBRARY_PATH, Library
from protocol.request import parse_request
from protocol.verdict import Verdict

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
_UNSET: Any = object()


@cache
def shipped() -> Library:
    """The shipped example library, loaded once per test session."""
    return load_library(DEFAULT_LIBRARY_PATH)


def ts(minutes_ago: float = 0) -> str:
    """RFC 3339 time ``minutes_ago`` before NOW."""
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


# Per profile: the norepinephrine unit, a weight, a running dose that is inside every range.
PROFILE_NE: dict[str, dict[str, Any]] = {
    "adult-icu": {"unit": "ug/kg/min", "weight": 70, "current": "0.05"},
    "adult-label": {"unit": "ug/min", "weight": 70, "current": "3"},
    "pediatric-icu": {"unit": "ug/kg/min", "weight": 20, "current": "0.2"},
    "hepatorenal": {"unit": "mg/h", "weight": 70, "current": "1.0"},
    "anaphylaxis": {"unit": "ug/kg/min", "weight": 70, "current": "0.1"},
}
PROFILES = sorted(PROFILE_NE)


def dose(value: Any, unit: str) -> dict[str, Any]:
    """``{"value": <float>, "unit": unit}`` as a JSON client would send it."""
    return {"value": float(Decimal(str(value))), "unit": unit}


def vitals(
    map_: float | None = 75, sbp: float | None = 120, minutes_ago: float = 2
) -> dict[str, Any]:
    """A vitals object with MAP and SBP taken ``minutes_ago`` before NOW."""
    out: dict[str, Any] = {}
    if map_ is not None:
        out["map"] = {"value": map_, "unit": "mm[Hg]", "at": ts(minutes_ago)}
    if sbp is not None:
        out["sbp"] = {"value": sbp, "unit": "mm[Hg]", "at": ts(minutes_ago)}
    return out


def make(
    *,
    profile: str = "adult-icu",
    drug: str = "norepinephrine",
    unit: str | None = None,
    new: Any = _UNSET,
    current: Any = _UNSET,
    stop: bool = False,
    rate: Any = None,
    weight: Any = _UNSET,
    conc: tuple[Any, str] = (4, "ug/mL"),
    diluent: str = "D5W",
    route: str = "central",
    line_shares: list[str] | None = None,
    vitals_: Any = _UNSET,
    others: list[dict[str, Any]] | None = None,
    history: list[dict[str, Any]] | None = None,
    patient: dict[str, Any] | None = None,
    pump: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A request dict; ``current=None`` makes a new infusion, ``new`` the requested dose."""
    base = PROFILE_NE.get(profile, PROFILE_NE["adult-icu"])
    unit = unit or base["unit"]
    w = base["weight"] if weight is _UNSET else weight
    cur = base["current"] if current is _UNSET else current
    if new is _UNSET:
        new = Decimal(str(cur if cur is not None else base["current"])) * Decimal("1.2")
    req: dict[str, Any] = {
        "now": ts(0),
        "profile": profile,
        "patient": {"weight_kg": w, **(patient or {})} if w is not None else dict(patient or {}),
        "infusion": {
            "drug": drug,
            "concentration": {"value": conc[0], "unit": conc[1]},
            "diluent": diluent,
            "route": route,
            "line_shares": line_shares or [],
        },
        "current": None if cur is None else dose(cur, unit),
        "history": (
            history
            if history is not None
            else ([] if cur is None else [{"at": ts(300), "dose": dose(cur, unit)}])
        ),
        "vitals": vitals() if vitals_ is _UNSET else vitals_,
        "other_infusions": others or [],
    }
    if stop:
        req["requested"] = {"action": "stop"}
    elif rate is not None:
        req["requested"] = {"rate": {"value": rate, "unit": "mL/h"}}
    else:
        req["requested"] = {"dose": dose(new, unit)}
    if pump is not None:
        req["pump"] = pump
    return req


def check(req: dict[str, Any], library: Library | None = None) -> Verdict:
    """Parse and evaluate a request dict."""
    return evaluate(library or shipped(), parse_request(req))


def rules(verdict: Verdict) -> set[str]:
    """The rule ids of a verdict's findings."""
    return {f.rule for f in verdict.findings}
