"""Cross-infusion rules over the patient's other channels: VASOPRESSIN_PREREQ, NOT_FIRST_LINE
and DUPLICATE_DRUG. ``other_infusions`` is treated as a set: its order never matters."""

from __future__ import annotations

from decimal import Decimal

from protocol.rules.context import Context
from protocol.units import dose_unit, ge
from protocol.verdict import Quantity, fmt


def check_prerequisite(ctx: Context) -> None:
    """VASOPRESSIN_PREREQ: starting or increasing without the prerequisite drug at its dose.

    Lowering or stopping needs no prerequisite (weaning: the demo bedside). Another channel's dose
    that cannot be converted to the prerequisite's unit (e.g. no weight) does not count.
    """
    prereq = ctx.drug.prerequisite
    if prereq is None or not ctx.increase:
        return
    need = prereq.min_dose
    target = dose_unit(need.unit)
    running: list[Decimal] = []
    for dose in ctx.others_named(prereq.drug):
        value = None if dose is None else ctx.other_dose(dose, target)
        if value is not None:
            if ge(value, need.value):
                return
            running.append(value)
    best = max(running, default=None)
    seen = (
        f"it runs at {fmt(best)} {need.unit}"
        if best is not None
        else f"no running {prereq.drug} dose is known"
    )
    ctx.add(
        "VASOPRESSIN_PREREQ",
        f"{ctx.name} is added only when {prereq.drug} already runs at {fmt(need.value)} "
        f"{need.unit} or more; {seen}; confirm to proceed",
        limit=Quantity(need.value, need.unit),
        observed=None if best is None else Quantity(best, need.unit),
    )


def check_first_line(ctx: Context) -> None:
    """NOT_FIRST_LINE: starting a second-line agent while no first-line alternative runs."""
    if ctx.drug.first_line or ctx.current is not None or ctx.stop or ctx.new is None:
        return
    alternatives = ctx.facts.first_line_alternatives
    ident = ctx.facts.vocabulary.ident
    for other in ctx.request.other_infusions:
        if ident(other.drug) in alternatives and (other.dose is None or other.dose.value > 0):
            return
    names = " or ".join(ctx.drug.first_line_alternatives) or "a first-line agent"
    reason = ctx.drug.first_line_reason or f"{ctx.name} is not a first-line agent"
    ctx.add(
        "NOT_FIRST_LINE",
        f"{reason}; no {names} is running. Confirm the indication to proceed",
    )


def check_duplicate(ctx: Context) -> None:
    """DUPLICATE_DRUG: the same drug already runs on another channel of this patient."""
    if ctx.stop or ctx.new is None:
        return
    count = len(ctx.others_named(ctx.name))
    if count:
        ctx.add(
            "DUPLICATE_DRUG",
            f"{ctx.name} already runs on {count} other channel(s) of this patient; "
            "check that this is not a duplicate order",
        )
