"""Dose and rate limits: HARD_MIN/MAX, SOFT_MIN/MAX, START_RANGE, MAINTENANCE_RANGE,
RENAL_DOSE_DOPAMINE and PUMP_RANGE.

Every boundary is inclusive (a dose equal to a limit is within it) and compared with
:func:`protocol.units.le`/``ge``. Dose limits apply to doses above zero: a zero dose is a stop,
judged by the taper rule, not by SOFT_MIN. A hard violation suppresses the soft finding on the
same side (one message per problem).

Each rule judges the dose delivered at the rounded pump rate (``ctx.new``); HARD_* and
PUMP_RANGE also judge the requested dose and the exact rate, so rounding never rescues a
request. The ``*_ok`` predicates are shared with the engine's rounding, which uses them to keep
the delivered dose on the same side of every limit as the requested one.
"""

from __future__ import annotations

from decimal import Decimal

from protocol.rules.context import Context
from protocol.units import ML_PER_H, ge, le, rate_to_dose, within
from protocol.verdict import Quantity, fmt

_ZERO = Decimal(0)


def hard_ok(ctx: Context, dose: Decimal) -> bool:
    """``dose`` is within the hard range."""
    hard = ctx.drug.hard
    # Exact comparison first (the usual case); the tolerant one only near a bound.
    return hard.min <= dose <= hard.max or within(dose, hard.min, hard.max)


def soft_ok(ctx: Context, dose: Decimal) -> bool:
    """``dose`` is within the soft range."""
    soft = ctx.drug.soft
    return within(dose, soft.min, soft.max)


def step_dose(ctx: Context) -> Decimal:
    """The dose one pump step (``resolution`` mL/h) delivers; 0 if the bag is not known."""
    if ctx.conc_unit is None or (ctx.unit.per_kg and ctx.weight is None):
        return _ZERO
    conc = ctx.request.infusion.concentration.value
    return rate_to_dose(ctx.resolution, ctx.unit, conc, ctx.conc_unit, ctx.weight)


def start_ok(ctx: Context, dose: Decimal) -> bool:
    """A new infusion's ``dose`` is within the start range (always true for a running one).

    A start range of a single value is met within one pump step of it: no pump rate may
    deliver exactly 0.5 mg/h, but the nearest step does.
    """
    start = ctx.drug.start
    if start is None or ctx.current is not None:
        return True
    if start.min == start.max:
        slack = step_dose(ctx)
        return within(dose, start.min - slack, start.max + slack)
    return within(dose, start.min, start.max)


def renal_ok(ctx: Context, dose: Decimal) -> bool:
    """``dose`` is above the 'renal dose' cut-off (or the drug has none)."""
    cutoff = ctx.drug.renal_dose_max
    return cutoff is None or not le(dose, cutoff)


def maintenance_ok(ctx: Context, dose: Decimal) -> bool:
    """A running infusion's ``dose`` is within the maintenance range (or there is none)."""
    rng = ctx.drug.maintenance
    return rng is None or ctx.current is None or within(dose, rng.min, rng.max)


def pump_ok(ctx: Context, rate: Decimal) -> bool:
    """``rate`` is one the pump can run: at least one step and its minimum, at most its max."""
    low = max(ctx.resolution, ctx.pump_min)
    # Exact comparison first (the usual case); the tolerant one only near a bound.
    return low <= rate <= ctx.pump_max or (ge(rate, low) and le(rate, ctx.pump_max))


def check_dose_limits(ctx: Context) -> None:
    """HARD_* (reject) and SOFT_* (confirm) against the profile's limits for this drug.

    Judged on the delivered dose, except that a requested dose outside the hard range is
    judged (and named) as requested: rounding never rescues a request, and the message shows
    the dose that was asked for.
    """
    new = ctx.new
    if new is None or ctx.stop:
        return
    requested = ctx.requested
    if requested is not None and requested is not new and not hard_ok(ctx, requested):
        new = requested
    hard, soft, pid = ctx.drug.hard, ctx.drug.soft, ctx.profile.id
    if not le(new, hard.max):
        ctx.add(
            "HARD_MAX",
            f"{ctx.name} {ctx.dose_text(new)} is above the hard maximum of "
            f"{ctx.dose_text(hard.max)} ({pid}); this dose cannot be given",
            limit=ctx.q(hard.max),
            observed=ctx.q(new),
        )
    elif not le(new, soft.max):
        ctx.add(
            "SOFT_MAX",
            f"{ctx.name} {ctx.dose_text(new)} is above the usual maximum of "
            f"{ctx.dose_text(soft.max)} ({pid}); confirm to proceed",
            limit=ctx.q(soft.max),
            observed=ctx.q(new),
        )
    if not ge(new, hard.min):
        ctx.add(
            "HARD_MIN",
            f"{ctx.name} {ctx.dose_text(new)} is below the hard minimum of "
            f"{ctx.dose_text(hard.min)} ({pid}); this dose cannot be given",
            limit=ctx.q(hard.min),
            observed=ctx.q(new),
        )
    elif not ge(new, soft.min):
        ctx.add(
            "SOFT_MIN",
            f"{ctx.name} {ctx.dose_text(new)} is below the usual minimum of "
            f"{ctx.dose_text(soft.min)} ({pid}); confirm to proceed",
            limit=ctx.q(soft.min),
            observed=ctx.q(new),
        )


def _range_text(ctx: Context, low: Decimal, high: Decimal) -> str:
    if low == high:
        return ctx.dose_text(low)
    return f"{fmt(low)}-{fmt(high)} {ctx.unit.code}"


def check_start_range(ctx: Context) -> None:
    """START_RANGE: a new infusion (no current dose) started outside the start range."""
    start, new = ctx.drug.start, ctx.new
    if start is None or new is None or ctx.stop or ctx.current is not None:
        return
    if start_ok(ctx, new):
        return
    side_limit = start.max if new > start.max else start.min
    ctx.add(
        "START_RANGE",
        f"starting {ctx.name} at {ctx.dose_text(new)}, outside the usual starting dose of "
        f"{_range_text(ctx, start.min, start.max)} ({ctx.profile.id}); confirm to proceed",
        limit=ctx.q(side_limit),
        observed=ctx.q(new),
    )


def check_maintenance(ctx: Context) -> None:
    """MAINTENANCE_RANGE (advisory): a running infusion titrated outside the maintenance range."""
    rng, new = ctx.drug.maintenance, ctx.new
    if rng is None or new is None or ctx.stop or ctx.current is None:
        return
    if maintenance_ok(ctx, new):
        return
    ctx.add(
        "MAINTENANCE_RANGE",
        f"{ctx.dose_text(new)} is outside the average maintenance dose of "
        f"{_range_text(ctx, rng.min, rng.max)} for {ctx.name}",
        limit=ctx.q(rng.max if new > rng.max else rng.min),
        observed=ctx.q(new),
    )


def check_renal_dose(ctx: Context) -> None:
    """RENAL_DOSE_DOPAMINE: a low ("renal") dose, which protects nothing and is discouraged."""
    cutoff, new = ctx.drug.renal_dose_max, ctx.new
    if cutoff is None or new is None or ctx.stop or renal_ok(ctx, new):
        return
    ctx.add(
        "RENAL_DOSE_DOPAMINE",
        f"{ctx.name} {ctx.dose_text(new)} is a low 'renal' dose (at or below "
        f"{ctx.dose_text(cutoff)}): it gives no renal protection and is discouraged; "
        "confirm the indication",
        limit=ctx.q(cutoff),
        observed=ctx.q(new),
    )


def check_pump_range(ctx: Context) -> None:
    """PUMP_RANGE: the rate is outside the pump's range or below one pump step.

    Judged on the rounded rate, and on the exact rate when the rounded one is inside (rounding
    never rescues a request).
    """
    rate, exact = ctx.rate, ctx.exact_rate
    if rate is None or exact is None or ctx.stop:
        return
    if rate is exact and ctx.resolution <= rate and ctx.pump_min <= rate <= ctx.pump_max:
        return  # the usual case, without a call: an exact rate well inside the range
    if pump_ok(ctx, rate):
        if rate == exact or pump_ok(ctx, exact):
            return
        rate = exact
    if not le(rate, ctx.pump_max):
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(rate)} mL/h is above the pump's maximum of {fmt(ctx.pump_max)} mL/h; "
            "use a stronger concentration",
            limit=Quantity(ctx.pump_max, ML_PER_H),
            observed=Quantity(rate, ML_PER_H),
        )
    elif not ge(rate, ctx.pump_min):
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(rate)} mL/h is below the pump's minimum of {fmt(ctx.pump_min)} mL/h; "
            "use a weaker concentration",
            limit=Quantity(ctx.pump_min, ML_PER_H),
            observed=Quantity(rate, ML_PER_H),
        )
    else:
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(exact)} mL/h is below the pump's resolution of {fmt(ctx.resolution)} mL/h; "
            "use a weaker concentration",
            limit=Quantity(ctx.resolution, ML_PER_H),
            observed=Quantity(exact, ML_PER_H),
        )
