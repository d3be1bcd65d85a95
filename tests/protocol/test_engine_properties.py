"""Property tests of the engine over broad random requests (hypothesis).

* a reject-level finding always makes the verdict reject (never accept or confirm), and the
  verdict is exactly the most severe finding;
* the verdict is deterministic and independent of key order and of the order of
  ``history``, ``other_infusions`` and ``line_shares``;
* the engine never raises on a well-formed request; rates sit on the pump resolution grid;
* a stop is never rejected and always yields rate 0.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.engine import evaluate
from protocol.request import parse_request
from protocol.verdict import Severity
from tests.protocol.builders import PROFILES, shipped, ts

DRUGS = ["norepinephrine", "vasopressin", "dobutamine", "dopamine", "phenylephrine", "epinephrine"]
UNITS = ["ug/kg/min", "mcg/kg/min", "ug/min", "mg/h", "[USP'U]/min", "U/min", "mg/kg"]
CONC_UNITS = ["ug/mL", "mg/mL", "[USP'U]/mL"]


def _mostly(draw: st.DrawFn, likely: Any, other: st.SearchStrategy[Any]) -> Any:
    """``likely`` three times out of four, else something drawn from ``other``."""
    return likely if draw(st.integers(0, 3)) else draw(other)


@st.composite
def doses(draw: st.DrawFn, unit: str = "ug/kg/min", top: float = 3.0) -> dict[str, Any]:
    value = draw(st.floats(min_value=0, max_value=top * 1.5, allow_nan=False))
    return {"value": round(value, 4), "unit": _mostly(draw, unit, st.sampled_from(UNITS))}


def _reading(value: int, minutes: float) -> dict[str, Any]:
    return {"value": value, "unit": "mm[Hg]", "at": ts(minutes)}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests that mostly name a real profile/drug/unit/bag, so every rule gets exercised."""
    profile_id = draw(st.sampled_from([*PROFILES, *PROFILES, "neonatal"]))
    profile = shipped().profile(profile_id) or shipped().profiles[0]
    known = [d.drug for d in profile.drugs]
    drug_name = _mostly(draw, draw(st.sampled_from(known)), st.sampled_from([*DRUGS, "milrinone"]))
    drug = shipped().drug(profile.id, drug_name) or profile.drugs[0]
    unit, top = drug.dose_unit, float(drug.hard.max)
    std = draw(st.sampled_from(drug.concentrations))
    minutes = st.floats(min_value=0, max_value=600, allow_nan=False)
    bp = st.fixed_dictionaries(
        {},
        optional={
            "map": st.builds(_reading, st.integers(40, 110), st.floats(0, 20)),
            "sbp": st.builds(_reading, st.integers(60, 200), st.floats(0, 20)),
        },
    )
    requested = draw(
        st.one_of(
            st.builds(lambda d: {"dose": d}, doses(unit, top)),
            st.builds(
                lambda r: {"rate": {"value": r, "unit": "mL/h"}},
                st.floats(0, 500, allow_nan=False).map(lambda x: round(x, 2)),
            ),
            st.just({"action": "stop"}),
        )
    )
    patient: dict[str, Any] = {"chronic_hypertension": draw(st.booleans())}
    if draw(st.integers(0, 4)):
        patient["weight_kg"] = draw(st.floats(0.3, 400).map(lambda x: round(x, 1)))
    if draw(st.booleans()):
        patient["baseline_sbp"] = draw(st.integers(90, 220))
    others = st.builds(
        lambda name, d: {"drug": name, "dose": d},
        st.sampled_from(DRUGS),
        st.one_of(st.none(), doses("ug/kg/min", 0.3), doses("[USP'U]/min", 0.04)),
    )
    req: dict[str, Any] = {
        "now": ts(0),
        "profile": profile_id,
        "patient": patient,
        "infusion": {
            "drug": drug_name,
            "concentration": _mostly(
                draw,
                {"value": float(std.value), "unit": std.unit},
                st.builds(
                    lambda v, u: {"value": v, "unit": u},
                    st.sampled_from([4, 16, 64, 65, 0.2, 1, 1600, 100, 3.3]),
                    st.sampled_from(CONC_UNITS),
                ),
            ),
            "diluent": _mostly(
                draw,
                (drug.diluents.allowed or ("D5W",))[0],
                st.sampled_from(["D5W", "D5NS", "NS", "LR"]),
            ),
            "route": draw(st.sampled_from(["central", "peripheral"])),
            "line_shares": _mostly(
                draw,
                [],
                st.lists(
                    st.sampled_from(["heparin", "alkaline", "sodium-bicarbonate", "insulin"]),
                    max_size=3,
                    unique=True,
                ),
            ),
        },
        "current": draw(st.one_of(st.none(), doses(unit, top))),
        "requested": requested,
        "history": draw(
            st.lists(
                st.builds(lambda m, d: {"at": ts(m), "dose": d}, minutes, doses(unit, top)),
                max_size=4,
            )
        ),
        "vitals": draw(st.one_of(st.none(), bp)),
        "other_infusions": draw(st.lists(others, max_size=3)),
    }
    if draw(st.booleans()):
        req["pump"] = {
            "min_rate": draw(st.sampled_from([0, 0.1, 1])),
            "max_rate": draw(st.sampled_from([100, 999.9, 1200])),
            "resolution": draw(st.sampled_from([0.01, 0.1, 1])),
        }
    return req


def _reordered(obj: Any, rng: random.Random) -> Any:
    """Same content, keys in another order, order-free lists shuffled."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _reordered(v, rng) for k, v in items}
    if isinstance(obj, list):
        out = [_reordered(v, rng) for v in obj]
        rng.shuffle(out)
        return out
    return obj


@settings(max_examples=300)
@given(req=requests())
def test_reject_findings_always_reject_and_verdict_is_the_worst(req: dict[str, Any]) -> None:
    """No request with a reject-level finding yields accept or confirm."""
    verdict = evaluate(shipped(), parse_request(req))
    severities = {f.severity for f in verdict.findings}
    if Severity.REJECT in severities:
        assert verdict.verdict == "reject"
    elif Severity.CONFIRM in severities:
        assert verdict.verdict == "confirm"
    else:
        assert verdict.verdict == "accept"
    ranks = [f.severity.rank for f in verdict.findings]
    assert ranks == sorted(ranks, reverse=True)
    if verdict.rate is None:
        assert verdict.verdict == "reject"
    else:
        resolution = Decimal(str(req.get("pump", {}).get("resolution", 0.01)))
        assert verdict.rate % resolution == 0
        assert verdict.rate >= 0
    if req["requested"].get("action") == "stop":
        assert verdict.rate == 0
        assert verdict.verdict != "reject"  # a stop is never rejected


@settings(max_examples=200)
@given(req=requests(), seed=st.integers(0, 2**32))
def test_verdict_is_deterministic_and_order_independent(req: dict[str, Any], seed: int) -> None:
    """Same request, any key order and list order: byte-identical verdict JSON."""
    first = evaluate(shipped(), parse_request(req)).to_dict()
    again = evaluate(shipped(), parse_request(req)).to_dict()
    shuffled = evaluate(shipped(), parse_request(_reordered(req, random.Random(seed)))).to_dict()
    assert first == again == shuffled


ENTRIES = [(p.id, d.drug) for p in shipped().profiles for d in p.drugs]


def _titration(profile: str, drug: str, value: Decimal) -> dict[str, Any]:
    entry = shipped().drug(profile, drug)
    assert entry is not None
    std = entry.concentrations[0]
    cur = {"value": float(entry.soft.min), "unit": entry.dose_unit}
    return {
        "now": ts(0),
        "profile": profile,
        "patient": {"weight_kg": 20 if profile == "pediatric-icu" else 70},
        "infusion": {
            "drug": drug,
            "concentration": {"value": float(std.value), "unit": std.unit},
            "diluent": entry.diluents.allowed[0],
            "route": "central",
        },
        "current": cur,
        "requested": {"dose": {"value": float(value), "unit": entry.dose_unit}},
    }


@settings(max_examples=200)
@given(entry=st.sampled_from(ENTRIES), t=st.decimals(min_value=0, max_value=1, places=6))
def test_doses_inside_soft_range_pass_the_limit_rules(entry: tuple[str, str], t: Decimal) -> None:
    """Any dose within [soft.min, soft.max] (ends included) has no HARD_*/SOFT_* finding."""
    profile, drug = entry
    lib_entry = shipped().drug(profile, drug)
    assert lib_entry is not None
    soft = lib_entry.soft
    value = soft.min + (soft.max - soft.min) * t
    value = Decimal(str(float(value)))  # what a JSON client would send
    if value == 0:
        return
    verdict = evaluate(shipped(), parse_request(_titration(profile, drug, value)))
    assert not {f.rule for f in verdict.findings} & {"HARD_MAX", "HARD_MIN", "SOFT_MAX", "SOFT_MIN"}


@settings(max_examples=200)
@given(entry=st.sampled_from(ENTRIES), over=st.decimals(min_value="0.0001", max_value=10, places=4))
def test_doses_above_hard_max_are_rejected(entry: tuple[str, str], over: Decimal) -> None:
    """Any dose above the hard maximum is HARD_MAX and the verdict is reject."""
    profile, drug = entry
    lib_entry = shipped().drug(profile, drug)
    assert lib_entry is not None
    value = lib_entry.hard.max * (1 + over / 100)
    verdict = evaluate(shipped(), parse_request(_titration(profile, drug, value)))
    assert "HARD_MAX" in {f.rule for f in verdict.findings}
    assert verdict.verdict == "reject"


@settings(max_examples=200)
@given(entry=st.sampled_from(ENTRIES), cents=st.integers(1, 99_999))
def test_rate_requests_round_trip(entry: tuple[str, str], cents: int) -> None:
    """A rate on the 0.01 mL/h grid comes back unchanged after rate -> dose -> rate."""
    profile, drug = entry
    req = _titration(profile, drug, Decimal(1))
    rate = Decimal(cents) / 100
    req["requested"] = {"rate": {"value": float(rate), "unit": "mL/h"}}
    verdict = evaluate(shipped(), parse_request(req))
    assert verdict.rate == rate
    assert verdict.dose is not None
    again = dict(
        req, requested={"dose": {"value": str(verdict.dose.value), "unit": verdict.dose.unit}}
    )
    assert evaluate(shipped(), parse_request(again)).rate == rate
