"""Bag, line and patient rules: CONC_ROUTE_MAX, CONC_NOT_STANDARD, DILUENT_FORBIDDEN,
INCOMPATIBLE_LINE, LINE_SHARE_UNKNOWN, WEIGHT_RANGE. They need no dose, so they run even when
it is unresolved.

Diluents and line shares are matched through the substance vocabulary
(:mod:`protocol.substances`): case, spaces, hyphens and underscores are ignored and synonyms
resolve to one substance (``normal saline`` is ``NS``, ``NaHCO3`` is sodium bicarbonate, a
member of the class ``alkaline``). What the vocabulary does not know is never taken as safe: an
unknown diluent is not an allowed one, an unknown line share needs a confirmation.
"""

from __future__ import annotations

from protocol.rules.context import Context
from protocol.substances import normalise
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
    """DILUENT_FORBIDDEN: the diluent is forbidden, not among the allowed ones, or unknown."""
    diluent = ctx.request.infusion.diluent
    rules = ctx.drug.diluents
    dk = normalise(diluent)
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
    elif not rules.allowed and not ctx.facts.vocabulary.knows(diluent):
        ctx.add(
            "DILUENT_FORBIDDEN",
            f"{diluent!r} is not a known diluent, so it cannot be checked against {ctx.name}; "
            "name the diluent (e.g. D5W, NS)",
        )


def check_line(ctx: Context) -> None:
    """INCOMPATIBLE_LINE: the line is shared with something this drug must not meet (a listed
    substance, a member of a listed class, or a class with a listed member); LINE_SHARE_UNKNOWN:
    a line share the vocabulary does not know, which therefore cannot be checked."""
    shares = ctx.request.infusion.line_shares
    if not shares:
        return
    incompatible = ctx.facts.incompatible
    vocabulary = ctx.facts.vocabulary
    hits: set[str] = set()
    unknown: set[str] = set()
    for share in shares:
        sk = normalise(share)
        if sk in incompatible:
            hits.add(share)
        elif not vocabulary.knows_key(sk):
            unknown.add(share)
    if hits:
        ctx.add(
            "INCOMPATIBLE_LINE",
            f"{ctx.name} shares its line with {', '.join(sorted(hits, key=normalise))}, which "
            "inactivates it or is incompatible; use a separate line",
        )
    for share in sorted(unknown, key=normalise):
        ctx.add(
            "LINE_SHARE_UNKNOWN",
            f"the line is shared with {share!r}, which the substance list does not know, so its "
            f"compatibility with {ctx.name} cannot be checked; check it, or use a separate line",
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
