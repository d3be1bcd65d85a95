"""Time-window rules over this infusion's history: TITRATION_INTERVAL, STEP_UP_WINDOW and
ABRUPT_STOP. ``now`` comes from the request; nothing here reads a clock.

History entries are sorted by time (then dose) before use, so their order in the request does
not matter.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from protocol.request import HistoryEntry
from protocol.rules.context import Context
from protocol.units import UnitError, close, convert_dose, dose_unit, le
from protocol.verdict import Quantity, fmt

_MINUTE = Decimal(60)
_ZERO = Decimal(0)


def _sorted(ctx: Context) -> list[HistoryEntry]:
    return sorted(ctx.request.history, key=lambda h: (h.at, h.dose.value, h.dose.unit))


def check_titration_interval(ctx: Context) -> None:
    """TITRATION_INTERVAL (advisory): a change sooner than the minimum interval after the last."""
    interval = ctx.drug.min_titration_interval_min
    history = ctx.request.history
    if interval is None or ctx.current is None or ctx.stop or not history:
        return
    if not (ctx.increase or ctx.decrease):
        return
    last = history[0].at
    for entry in history:
        last = max(last, entry.at)
    elapsed = ctx.request.now - last
    if elapsed.microseconds:
        elapsed_s = Decimal(elapsed.total_seconds())
        if elapsed_s >= interval * _MINUTE:
            return
    else:  # whole seconds: compared as timedeltas, the same exact answer (DrugFacts)
        threshold = ctx.facts.titration_interval
        assert threshold is not None  # derived from the same library field
        if elapsed >= threshold:
            return
        elapsed_s = Decimal(elapsed.days * 86400 + elapsed.seconds)
    elapsed_min = elapsed_s / _MINUTE
    ctx.add(
        "TITRATION_INTERVAL",
        f"the last {ctx.name} change was {fmt(elapsed_min)} min ago; wait at least "
        f"{fmt(interval)} min between changes and check the blood pressure first",
        limit=Quantity(interval, "min"),
        observed=Quantity(elapsed_min.quantize(Decimal("0.1")), "min"),
    )


def step_up_window(ctx: Context) -> tuple[Decimal, Decimal] | None:
    """(lowest dose that ran at any moment of the window, allowed increase) for STEP_UP_WINDOW,
    or ``None`` when the drug has no step-up rule or the history cannot be read.

    The infusion started at its earliest ``history`` entry; before that it ran at 0, and a
    request without history is a new start as far as this rule knows (every moment of the
    window counts as 0). So the lowest dose is the minimum of: the dose in effect at the
    window's start (0 if that is before the first entry), every dose set within the window,
    and the current dose. Computed once per request.
    """
    if ctx.step_up_known:
        return ctx.step_up
    ctx.step_up_known = True
    rule = ctx.drug.step_up
    if rule is None:
        return None
    now = ctx.request.now
    window_start = now - timedelta(seconds=float(rule.window_h * 3600))
    lows: list[Decimal] = [ctx.base]
    at_start = _ZERO  # before the first entry the infusion was not running
    for index, entry in enumerate(_sorted(ctx)):
        dose = _history_dose(ctx, index, entry)
        if dose is None:
            return None
        if entry.at <= window_start:
            at_start = dose
        elif entry.at <= now:
            lows.append(dose)
    lows.append(at_start)
    found = (min(lows), rule.max_increase)
    ctx.step_up = found
    return found


def step_up_ok(ctx: Context, dose: Decimal) -> bool:
    """``dose`` rises at most the allowed step above the window's lowest dose (or does not
    rise at all)."""
    if not ctx.rises(dose):
        return True
    window = step_up_window(ctx)
    if window is None:
        return True
    lowest, step = window
    return le(dose - lowest, step)


def check_step_up(ctx: Context) -> None:
    """STEP_UP_WINDOW: the dose would exceed the lowest dose that ran at any moment of the
    window by more than the allowed step (see :func:`step_up_window`), so splitting a big step
    into small ones, or lowering first and then raising further, does not get around it."""
    rule = ctx.drug.step_up
    new = ctx.new
    if rule is None or new is None or not ctx.increase or step_up_ok(ctx, new):
        return
    window = step_up_window(ctx)
    assert window is not None  # step_up_ok is false only with a window
    lowest = window[0]
    total = new - lowest
    ctx.add(
        "STEP_UP_WINDOW",
        f"{ctx.name} would rise by {ctx.dose_text(total)} within {fmt(rule.window_h)} h "
        f"(from {ctx.dose_text(lowest)} to {ctx.dose_text(new)}); at most "
        f"+{ctx.dose_text(rule.max_increase)} per {fmt(rule.window_h)} h ({ctx.profile.id})",
        limit=ctx.q(rule.max_increase),
        observed=ctx.q(total),
    )


def _history_dose(ctx: Context, index: int, entry: HistoryEntry) -> Decimal | None:
    try:
        return convert_dose(entry.dose.value, dose_unit(entry.dose.unit), ctx.unit, ctx.weight)
    except UnitError as exc:
        rule = "WEIGHT_REQUIRED" if "weight" in str(exc) else "UNIT_MISMATCH"
        ctx.add(rule, f"history[{index}].dose: {exc}")
        return None


def taper_ok(ctx: Context, dose: Decimal) -> bool:
    """Lowering a running dose to ``dose`` stays within the taper rule (or is no drop)."""
    taper, current = ctx.drug.taper, ctx.current
    if taper is None or current is None or not dose < current or close(dose, current):
        return True
    if le(current, taper.stop_from_above):
        return True
    return le((current - dose) / current, taper.max_drop_fraction)


def check_abrupt_stop(ctx: Context) -> None:
    """ABRUPT_STOP: stopping, or dropping by more than the taper fraction, from a high dose."""
    taper, current, new = ctx.drug.taper, ctx.current, ctx.new
    if taper is None or current is None or new is None or not ctx.decrease:
        return
    if le(current, taper.stop_from_above):
        return
    drop = (current - new) / current
    if not ctx.stop and taper_ok(ctx, new):
        return
    what = "stopping" if ctx.stop else f"dropping to {ctx.dose_text(new)}"
    ctx.add(
        "ABRUPT_STOP",
        f"{what} from {ctx.dose_text(current)} is an abrupt withdrawal of {ctx.name}; taper "
        f"by at most {fmt(taper.max_drop_fraction * 100)}% per step above "
        f"{ctx.dose_text(taper.stop_from_above)}",
        limit=Quantity(taper.max_drop_fraction * 100, "%"),
        observed=Quantity(drop * 100, "%"),
    )
