"""Bag, line and patient rules: CONC_ROUTE_MAX, CONC_NOT_STANDARD, DILUENT_FORBIDDEN,
INCOMPATIBLE_LINE, WEIGHT_RANGE. They need no dose, so they run even when it is unresolved."""

from __future__ import annotations

from protocol.library import key
from protocol.rules.context import Context
from protocol.units import close, le, within
from protocol.verdict import Quantity, fmt


def check_concentration(ctx: Context) -> None:
    """CONC_ROUTE_MAX above the route's maximum; CONC_NOT_STANDARD if not a standard bag."""
    if ctx.conc_base is None or ctx.conc_unit is None:
        return
    given = ctx.request.infusion.concentration
    route = ctx.request.infusion.route
    facts = ctx.facts
    route_max = facts.route_max.get(route)
    if route_max is not None:
        limit, limit_base = route_max
        if not le(ctx.conc_base, limit_base):
            ctx.add(
                "CONC_ROUTE_MAX",
                f"{ctx.name} {fmt(given.value)} {ctx.conc_unit.code} is above the maximum "
                f"concentration for a {route} line ({fmt(limit.value)} {limit.unit}); "
                "use a weaker bag or a central line",
                limit=Quantity(limit.value, limit.unit),
                observed=Quantity(given.value, ctx.conc_unit.code),
            )
    conc_base = ctx.conc_base
    bases = facts.standard_bases
    if conc_base not in bases and not any(close(conc_base, base) for base in bases):
        standards = ctx.drug.concentrations
        listed = ", ".join(f"{fmt(s.value)} {s.unit}" for s in standards)
        ctx.add(
            "CONC_NOT_STANDARD",
            f"{ctx.name} {fmt(given.value)} {ctx.conc_unit.code} is not a standard "
            f"concentration (standard: {listed}); check the bag label",
            observed=Quantity(given.value, ctx.conc_unit.code),
        )


def check_diluent(ctx: Context) -> None:
    """DILUENT_FORBIDDEN: the diluent is forbidden, or not among the allowed ones."""
    diluent = ctx.request.infusion.diluent
    rules = ctx.drug.diluents
    dk = key(diluent)
    if dk in ctx.facts.forbidden_diluents:
        ctx.add(
            "DILUENT_FORBIDDEN",
            f"{ctx.name} must not be diluted in {diluent}"
            + (f"; use {' or '.join(rules.allowed)}" if rules.allowed else ""),
        )
    elif rules.allowed and dk not in ctx.facts.allowed_diluents:
        ctx.add(
            "DILUENT_FORBIDDEN",
            f"{diluent} is not an allowed diluent for {ctx.name}; use {' or '.join(rules.allowed)}",
        )


def check_line(ctx: Context) -> None:
    """INCOMPATIBLE_LINE: the line is shared with something this drug must not meet."""
    incompatible = ctx.facts.incompatible
    if not incompatible:
        return
    shared = {s for s in ctx.request.infusion.line_shares if key(s) in incompatible}
    if shared:
        hits = sorted(shared, key=key)
        ctx.add(
            "INCOMPATIBLE_LINE",
            f"{ctx.name} shares its line with {', '.join(hits)}, which inactivates it "
            "or is incompatible; use a separate line",
        )


def check_weight_range(ctx: Context) -> None:
    """WEIGHT_RANGE: a stated weight outside the profile's range (wrong profile or typo)."""
    limits = ctx.profile.weight_kg
    weight = ctx.weight
    if limits is None or weight is None or within(weight, limits.min, limits.max):
        return
    side = "above" if weight > limits.max else "below"
    bound = limits.max if side == "above" else limits.min
    ctx.add(
        "WEIGHT_RANGE",
        f"weight {fmt(weight)} kg is {side} the {ctx.profile.id} range "
        f"({fmt(limits.min)}-{fmt(limits.max)} kg); check the weight and the profile",
        limit=Quantity(bound, "kg"),
        observed=Quantity(weight, "kg"),
    )
