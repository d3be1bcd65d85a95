"""Vitals-aware rules: VITALS_STALE, MAP_ABOVE_TARGET, MAP_BELOW_TARGET, SBP_CEILING and
ESCALATION_ADVISORY.

Only readings taken within the profile's ``vitals_max_age_min`` of the request's ``now`` are
used (a reading stamped slightly after ``now`` counts as fresh). Targets are strict
comparisons, so a MAP equal to a target is on target: 85 is not "above 85", 65 not "below 65".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from protocol.request import Reading
from protocol.rules.context import Context
from protocol.units import ge, le
from protocol.verdict import Quantity, fmt

_BP = "mm[Hg]"


def _fresh(reading: Reading | None, now: datetime, max_age: timedelta) -> Decimal | None:
    if reading is None or now - reading.at > max_age:
        return None
    return reading.value


def check_vitals(ctx: Context) -> None:
    """All vitals rules for a non-stop request."""
    if ctx.new is None or ctx.stop:
        return
    request = ctx.request
    vitals = request.vitals
    if vitals is None:
        map_ = sbp = None
    else:
        now, max_age = request.now, ctx.facts.vitals_max_age
        map_ = _fresh(vitals.map, now, max_age)
        sbp = _fresh(vitals.sbp, now, max_age)
    if map_ is None and sbp is None:
        ctx.add(
            "VITALS_STALE",
            f"no blood pressure within the last {fmt(ctx.profile.vitals_max_age_min)} min; "
            f"check the blood pressure before changing {ctx.name}",
            limit=Quantity(ctx.profile.vitals_max_age_min, "min"),
        )
    if ctx.drug.titrate_to_map:
        _check_targets(ctx, map_, sbp)
    if map_ is not None:
        _check_escalation(ctx, map_)


def _check_targets(ctx: Context, map_: Decimal | None, sbp: Decimal | None) -> None:
    targets = ctx.profile.targets
    ceiling = targets.map_max
    if ctx.increase and map_ is not None and ceiling is not None and not le(map_, ceiling):
        ctx.add(
            "MAP_ABOVE_TARGET",
            f"MAP is {fmt(map_)} mmHg, above the target ceiling of {fmt(ceiling)} mmHg; "
            f"increasing {ctx.name} is not indicated",
            limit=Quantity(ceiling, _BP),
            observed=Quantity(map_, _BP),
        )
    if ctx.decrease and map_ is not None:
        floor = targets.map_min
        why = ""
        if ctx.request.patient.chronic_hypertension and targets.map_min_chronic_hypertension:
            floor = targets.map_min_chronic_hypertension
            why = " for a patient with chronic hypertension"
        if floor is not None and not ge(map_, floor):
            ctx.add(
                "MAP_BELOW_TARGET",
                f"MAP is {fmt(map_)} mmHg, below the target of {fmt(floor)} mmHg{why}; "
                f"lowering {ctx.name} is not indicated",
                limit=Quantity(floor, _BP),
                observed=Quantity(map_, _BP),
            )
    baseline = ctx.request.patient.baseline_sbp
    margin = targets.sbp_below_baseline
    if ctx.increase and sbp is not None and baseline is not None and margin is not None:
        sbp_max = baseline - margin
        if not le(sbp, sbp_max):
            ctx.add(
                "SBP_CEILING",
                f"SBP is {fmt(sbp)} mmHg, above {fmt(sbp_max)} mmHg ({fmt(margin)} below the "
                f"patient's usual {fmt(baseline)} mmHg); increasing {ctx.name} is not indicated",
                limit=Quantity(sbp_max, _BP),
                observed=Quantity(sbp, _BP),
            )


def _check_escalation(ctx: Context, map_: Decimal) -> None:
    rule, new = ctx.drug.escalation, ctx.new
    if rule is None or new is None:
        return
    if not ge(new, rule.at) or ge(map_, rule.map_below):
        return
    if rule.advise_drug is not None:
        ident = ctx.facts.vocabulary.ident
        wanted = ident(rule.advise_drug)
        if any(ident(o.drug) == wanted for o in ctx.request.other_infusions):
            return
    ctx.add(
        "ESCALATION_ADVISORY",
        f"MAP {fmt(map_)} mmHg is below {fmt(rule.map_below)} mmHg with {ctx.name} at "
        f"{ctx.dose_text(new)}: consider adding {rule.advise}",
        limit=Quantity(rule.map_below, _BP),
        observed=Quantity(map_, _BP),
    )
