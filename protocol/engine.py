"""The rule engine: ``evaluate(library, request) -> Verdict`` (DESIGN.md 3.4).

Pure and deterministic: no clock (``now`` is in the request), no I/O, no dependence on the
order of dicts or lists in the request. Steps:

1. resolve profile and drug (UNKNOWN_PROFILE / UNKNOWN_DRUG end the check);
2. resolve units: the bag concentration, the running dose and the requested dose or rate are
   converted to the drug's canonical dose unit (UNIT_MISMATCH if impossible, WEIGHT_REQUIRED
   if a per-kg conversion has no weight);
3. compute the pump rate and round it to the pump resolution;
4. run every rule family (bag/line/patient, limits, history windows, vitals, other channels);
5. the verdict is the most severe finding: any reject-level finding makes it ``reject``.

Rate rounding: ``rate = round_half_up(exact_rate / resolution) * resolution`` with the pump's
``resolution`` (default 0.01 mL/h), so the rate differs from the exact one by at most half a
step. Dose limits are judged on the requested dose; for a request given as a rate, on the dose
that the rounded rate delivers. A zero dose or rate is a stop (rate 0).

A stop is never rejected: a rejected request leaves the running infusion as it was, and no rule
may keep an infusion running against a clinician's stop. So for a stop only ABRUPT_STOP
(confirm) is judged; bag, line, weight and unit rules are skipped, and a stop of a drug or
profile the library does not know is accepted with an advisory UNKNOWN_DRUG/UNKNOWN_PROFILE
finding.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from protocol.library import Library
from protocol.request import DEFAULT_RESOLUTION, Amount, CheckRequest
from protocol.rules import cross, history, infusion, limits, vitals
from protocol.rules.catalog import DEFAULT_SEVERITY
from protocol.rules.context import Context
from protocol.units import (
    UnitError,
    concentration_unit,
    convert_dose,
    dose_to_rate,
    dose_unit,
    rate_to_dose,
    rate_unit,
)
from protocol.verdict import Finding, LibraryIdentity, Outcome, Severity, Verdict, outcome_of

_ZERO: Final = Decimal(0)


def round_rate(rate: Decimal, resolution: Decimal = DEFAULT_RESOLUTION) -> Decimal:
    """Round a rate (mL/h) to the nearest multiple of ``resolution``, halves away from zero."""
    return (rate / resolution).to_integral_value(rounding=ROUND_HALF_UP) * resolution


def evaluate(library: Library, request: CheckRequest) -> Verdict:
    """Judge one check request against the library; never raises for a well-formed request."""
    identity = library.identity
    stopping = _is_stop(request)
    facts = library.facts(request.profile, request.infusion.drug)
    if facts is None:
        profile = library.profile(request.profile)
        if profile is None:
            known = ", ".join(p.id for p in library.profiles)
            return _early(
                library,
                "UNKNOWN_PROFILE",
                f"profile {request.profile!r} is not in the drug library (known: {known})",
                stopping=stopping,
            )
        known = ", ".join(d.drug for d in profile.drugs)
        return _early(
            library,
            "UNKNOWN_DRUG",
            f"{request.infusion.drug!r} is not in the {profile.id} drug library (known: {known})",
            stopping=stopping,
        )
    ctx = Context(request, facts.profile, facts.drug, facts.unit, request.patient.weight_kg, facts)
    if stopping:
        _judge_stop(ctx)
        return _verdict(ctx, identity)
    _resolve_concentration(ctx)
    current_ok = _resolve_current(ctx)
    exact_rate = _resolve_requested(ctx)

    infusion.check_concentration(ctx)
    infusion.check_diluent(ctx)
    infusion.check_line(ctx)
    infusion.check_weight_range(ctx)
    if ctx.new is not None and current_ok:
        limits.check_dose_limits(ctx)
        limits.check_start_range(ctx)
        limits.check_maintenance(ctx)
        limits.check_renal_dose(ctx)
        if exact_rate is not None:
            limits.check_pump_range(ctx, exact_rate)
        history.check_titration_interval(ctx)
        history.check_step_up(ctx)
        history.check_abrupt_stop(ctx)
        vitals.check_vitals(ctx)
        cross.check_prerequisite(ctx)
        cross.check_first_line(ctx)
        cross.check_duplicate(ctx)

    return _verdict(ctx, identity)


def _verdict(ctx: Context, identity: LibraryIdentity) -> Verdict:
    if ctx.findings:
        findings = tuple(sorted(ctx.findings, key=_finding_order))
        outcome = outcome_of(findings)
    else:
        findings, outcome = (), Outcome.ACCEPT
    # Positional: a frozen dataclass's keyword construction is measurably slower per verdict.
    dose = None if ctx.new is None else ctx.q(ctx.new)
    return Verdict(outcome, ctx.rate, dose, findings, identity)


def _finding_order(finding: Finding) -> tuple[int, str, str]:
    return (-finding.severity.rank, finding.rule, finding.message)


def _is_stop(request: CheckRequest) -> bool:
    """``action: stop``, or a requested dose or rate of exactly zero."""
    requested = request.requested
    return (
        requested.action == "stop"
        or (requested.dose is not None and requested.dose.value == 0)
        or (requested.rate is not None and requested.rate.value == 0)
    )


def _early(library: Library, rule: str, message: str, *, stopping: bool) -> Verdict:
    if stopping:
        finding = Finding(rule, Severity.ADVISORY, f"{message}; stopping is allowed")
        return Verdict(Outcome.ACCEPT, _ZERO, None, (finding,), library.identity)
    finding = Finding(rule, DEFAULT_SEVERITY[rule], f"{message}; it cannot be checked")
    return Verdict(Outcome.REJECT, None, None, (finding,), library.identity)


def _judge_stop(ctx: Context) -> None:
    """A stop: rate 0, and only the taper rule (when the running dose can be read)."""
    pump = ctx.request.pump
    ctx.stop = True
    ctx.new = _ZERO
    ctx.rate = _ZERO * (pump.resolution if pump is not None else DEFAULT_RESOLUTION)
    current = ctx.request.current
    if current is None:
        return
    try:
        ctx.current = convert_dose(current.value, dose_unit(current.unit), ctx.unit, ctx.weight)
    except UnitError:
        return  # cannot judge the taper; a stop is never rejected for a unit
    history.check_abrupt_stop(ctx)


def _weight_missing(ctx: Context, why: str) -> None:
    ctx.add(
        "WEIGHT_REQUIRED",
        f"the patient's weight is required {why}; enter the weight (kg) first",
    )


def _resolve_concentration(ctx: Context) -> None:
    given = ctx.request.infusion.concentration
    try:
        unit = concentration_unit(given.unit)
    except UnitError as exc:
        ctx.add("UNIT_MISMATCH", f"infusion.concentration.unit: {exc}")
        return
    if unit.amount is not ctx.unit.amount:
        ctx.add(
            "UNIT_MISMATCH",
            f"a {ctx.name} bag in {unit.code} cannot deliver a dose in {ctx.unit.code}; "
            "check the concentration unit",
        )
        return
    ctx.conc_unit = unit
    ctx.conc_base = given.value * unit.factor


def _to_canonical(ctx: Context, amount: Amount, field: str) -> Decimal | None:
    if amount.unit == ctx.unit.code:
        return amount.value  # already the canonical unit: what convert_dose would return
    try:
        unit = dose_unit(amount.unit)
    except UnitError as exc:
        ctx.add("UNIT_MISMATCH", f"{field}.unit: {exc}")
        return None
    if unit.amount is not ctx.unit.amount:
        ctx.add(
            "UNIT_MISMATCH",
            f"{field}: a dose in {unit.code} cannot be converted to {ctx.name}'s unit "
            f"{ctx.unit.code}",
        )
        return None
    if unit.per_kg != ctx.unit.per_kg and ctx.weight is None:
        _weight_missing(ctx, f"to convert {field} from {unit.code} to {ctx.unit.code}")
        return None
    return convert_dose(amount.value, unit, ctx.unit, ctx.weight)


def _resolve_current(ctx: Context) -> bool:
    current = ctx.request.current
    if current is None:
        return True
    ctx.current = _to_canonical(ctx, current, "current")
    return ctx.current is not None


def _resolve_requested(ctx: Context) -> Decimal | None:
    """Set ``ctx.new``, ``ctx.stop`` and ``ctx.rate``; return the exact (unrounded) rate."""
    requested = ctx.request.requested
    pump = ctx.request.pump
    resolution = pump.resolution if pump is not None else DEFAULT_RESOLUTION
    can_rate = ctx.conc_base is not None and ctx.conc_unit is not None
    if ctx.unit.per_kg and ctx.weight is None:
        _weight_missing(ctx, f"to give {ctx.name} in {ctx.unit.code}")
        can_rate = False
    if requested.dose is not None:
        ctx.new = _to_canonical(ctx, requested.dose, "requested.dose")
        if ctx.new is None or not can_rate:
            return None
        assert ctx.conc_unit is not None  # narrowed by can_rate
        exact = dose_to_rate(
            ctx.new,
            ctx.unit,
            ctx.request.infusion.concentration.value,
            ctx.conc_unit,
            ctx.weight,
        )
        ctx.rate = round_rate(exact, resolution)
        return exact
    assert requested.rate is not None  # Requested holds exactly one
    try:
        rate_unit(requested.rate.unit)
    except UnitError as exc:
        ctx.add("UNIT_MISMATCH", f"requested.rate.unit: {exc}")
        return None
    if not can_rate:
        return None
    assert ctx.conc_unit is not None  # narrowed by can_rate
    exact = requested.rate.value
    ctx.rate = round_rate(exact, resolution)
    ctx.new = rate_to_dose(
        ctx.rate,
        ctx.unit,
        ctx.request.infusion.concentration.value,
        ctx.conc_unit,
        ctx.weight,
    )
    return exact
