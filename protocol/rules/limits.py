"""Dose and rate limits: HARD_MIN/MAX, SOFT_MIN/MAX, START_RANGE, MAINTENANCE_RANGE,
RENAL_DOSE_DOPAMINE and PUMP_RANGE.

Every boundary is inclusive (a dose equal to a limit is within it) and compared with
:func:`protocol.units.le`/``ge``. Dose limits apply to doses above zero: a zero dose is a stop,
judged by the taper rule, not by SOFT_MIN. A hard violation suppresses the soft finding on the
same side (one message per problem).
"""

from __future__ import annotations

from decimal import Decimal

from protocol.request import DEFAULT_RESOLUTION
from protocol.rules.context import Context
from protocol.units import ML_PER_H, ge, le, within
from protocol.verdict import Quantity, fmt


def check_dose_limits(ctx: Context) -> None:
    """HARD_* (reject) and SOFT_* (confirm) against the profile's limits for this drug."""
    new = ctx.new
    if new is None or ctx.stop:
        return
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
    if within(new, start.min, start.max):
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
    if within(new, rng.min, rng.max):
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
    if cutoff is None or new is None or ctx.stop or not le(new, cutoff):
        return
    ctx.add(
        "RENAL_DOSE_DOPAMINE",
        f"{ctx.name} {ctx.dose_text(new)} is a low 'renal' dose (at or below "
        f"{ctx.dose_text(cutoff)}): it gives no renal protection and is discouraged; "
        "confirm the indication",
        limit=ctx.q(cutoff),
        observed=ctx.q(new),
    )


def check_pump_range(ctx: Context, exact_rate: Decimal) -> None:
    """PUMP_RANGE: the rate is outside the pump's range or below its resolution."""
    rate = ctx.rate
    if rate is None or ctx.stop:
        return
    pump = ctx.request.pump
    resolution = pump.resolution if pump is not None else DEFAULT_RESOLUTION
    if rate == 0 and exact_rate > 0:
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(exact_rate)} mL/h is below the pump's resolution of {fmt(resolution)} mL/h; "
            "use a weaker concentration",
            limit=Quantity(resolution, ML_PER_H),
            observed=Quantity(exact_rate, ML_PER_H),
        )
        return
    if pump is None:
        return
    if pump.max_rate is not None and not le(rate, pump.max_rate):
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(rate)} mL/h is above this pump's maximum of {fmt(pump.max_rate)} mL/h; "
            "use a stronger concentration",
            limit=Quantity(pump.max_rate, ML_PER_H),
            observed=Quantity(rate, ML_PER_H),
        )
    elif not ge(rate, pump.min_rate):
        ctx.add(
            "PUMP_RANGE",
            f"{fmt(rate)} mL/h is below this pump's minimum of {fmt(pump.min_rate)} mL/h; "
            "use a weaker concentration",
            limit=Quantity(pump.min_rate, ML_PER_H),
            observed=Quantity(rate, ML_PER_H),
        )
