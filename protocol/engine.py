"""The rule engine: ``evaluate(library, request) -> Verdict`` (docs/check.md).

Pure and deterministic: no clock (``now`` is in the request), no I/O, no dependence on the
order of dicts or lists in the request. Steps:

1. resolve profile and drug (UNKNOWN_PROFILE / UNKNOWN_DRUG end the check);
2. resolve units: the bag concentration, the running dose and the requested dose or rate are
   converted to the drug's canonical dose unit (UNIT_MISMATCH if impossible, WEIGHT_REQUIRED
   if a per-kg conversion has no weight);
3. compute the exact pump rate and round it to the pump's resolution, toward safety;
4. run every rule family (bag/line/patient, limits, history windows, vitals, other channels)
   on the dose delivered at the rounded rate;
5. the verdict is the most severe finding: any reject-level finding makes it ``reject``.

The pump is the request's ``pump`` (range and resolution in mL/h), each missing field taken
from the library's ``pump_default``.

Rate rounding, toward safety. The rate is a multiple of the resolution: the exact rate when it
is one, else one of the two steps around it (never 0: a positive request is never turned into
a stop). Every limit the rounding could cross is listed with a tier (the severity of its rule
for this drug: reject, confirm, advisory): the pump range, the hard and soft ranges, the start
range, the step-up window, the taper, the renal-dose cut-off and the maintenance range. A step
"keeps" a limit when its delivered dose is on the same side of it (inside or outside) as the
requested dose. The first of these wins, trying the nearest step (halves up) before the other:
a step that keeps every limit; one that keeps the reject and confirm ones; one that keeps the
reject ones; else the nearest step. So a dose
inside a limit stays inside (hepatorenal 3 mg/h at 64 ug/mL is 46.875 mL/h -> 46.87, never
46.88 = 3.00032 mg/h), and a dose outside stays outside. The verdict's ``dose`` is the dose
delivered at the rate, and the rules judge that dose; HARD_* and PUMP_RANGE also judge the
requested dose and the exact rate, so rounding never rescues a request. Sending the verdict's
rate back as the request therefore gives the same verdict, rate and dose, and the same rule ids
whenever a step keeps every reject-tier limit. When none does (the two reject-tier limits lie on
either side of one pump step: norepinephrine 101 ug/min at 64 mg/mL asks 0.0947 mL/h, above
the hard maximum by dose and below a 0.1 mL/h pump minimum by rate, and a 0.01 mL/h step is
10.7 ug/min), both requests are rejected, but which of the two reject findings the rate
alone shows depends on the step. A zero dose or rate is a stop
(rate 0).

A stop is never rejected: a rejected request leaves the running infusion as it was, and no rule
may keep an infusion running against a clinician's stop. So for a stop only ABRUPT_STOP
(confirm) is judged; bag, line, weight and unit rules are skipped, and a stop of a drug or
profile the library does not know is accepted with an advisory UNKNOWN_DRUG/UNKNOWN_PROFILE
finding.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Final

from protocol.library import Library
from protocol.request import DEFAULT_RESOLUTION, Amount, CheckRequest
from protocol.rule_ids import DEFAULT_SEVERITY
from protocol.rules import cross, history, infusion, limits, vitals
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
_HALF: Final = Decimal("0.5")
# Rounding tiers by the severity of the rule whose limit a step would cross.
_TIER: Final = {Severity.REJECT: 0, Severity.CONFIRM: 1, Severity.ADVISORY: 2, Severity.INFO: 3}
_ALL_TIERS: Final = (3, 1, 0)  # keep every limit; then reject + confirm; then reject only

Limit = tuple[int, Callable[[Context, Decimal, Decimal], bool]]  # (tier, ok(ctx, rate, dose))


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
    pump_min, pump_max, resolution = _pump(library, request)
    ctx = Context(
        request,
        facts.profile,
        facts.drug,
        facts.unit,
        request.patient.weight_kg,
        facts,
        pump_min,
        pump_max,
        resolution,
    )
    if stopping:
        _judge_stop(ctx)
        return _verdict(ctx, identity)
    _resolve_concentration(ctx)
    current_ok = _resolve_current(ctx)
    _resolve_requested(ctx, current_ok=current_ok)
    ctx.compare_doses()

    infusion.check_concentration(ctx)
    infusion.check_diluent(ctx)
    infusion.check_line(ctx)
    infusion.check_weight_range(ctx)
    if ctx.new is not None and current_ok:
        limits.check_dose_limits(ctx)
        limits.check_start_range(ctx)
        limits.check_maintenance(ctx)
        limits.check_renal_dose(ctx)
        limits.check_pump_range(ctx)
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
    ctx.stop = True
    ctx.new = ctx.requested = _ZERO
    ctx.rate = _ZERO * ctx.resolution
    current = ctx.request.current
    if current is None:
        return
    try:
        ctx.current = convert_dose(current.value, dose_unit(current.unit), ctx.unit, ctx.weight)
    except UnitError:
        return  # cannot judge the taper; a stop is never rejected for a unit
    ctx.compare_doses()
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


def _pump(library: Library, request: CheckRequest) -> tuple[Decimal, Decimal, Decimal]:
    """(min_rate, max_rate, resolution) in mL/h: the request's pump, else the library's."""
    default = library.pump_default
    pump = request.pump
    if pump is None:
        return library.pump_limits
    return (
        default.min_rate if pump.min_rate is None else pump.min_rate,
        default.max_rate if pump.max_rate is None else pump.max_rate,
        default.resolution if pump.resolution is None else pump.resolution,
    )


def _resolve_requested(ctx: Context, *, current_ok: bool) -> None:
    """Set ``requested``, ``exact_rate``, ``rate`` (rounded toward safety) and ``new``."""
    requested = ctx.request.requested
    can_rate = ctx.conc_base is not None and ctx.conc_unit is not None
    if ctx.unit.per_kg and ctx.weight is None:
        _weight_missing(ctx, f"to give {ctx.name} in {ctx.unit.code}")
        can_rate = False
    conc = ctx.request.infusion.concentration.value
    if requested.dose is not None:
        ctx.requested = ctx.new = _to_canonical(ctx, requested.dose, "requested.dose")
        if ctx.requested is None or not can_rate:
            return
        assert ctx.conc_unit is not None  # narrowed by can_rate
        exact = dose_to_rate(ctx.requested, ctx.unit, conc, ctx.conc_unit, ctx.weight)
    else:
        assert requested.rate is not None  # Requested holds exactly one
        try:
            rate_unit(requested.rate.unit)
        except UnitError as exc:
            ctx.add("UNIT_MISMATCH", f"requested.rate.unit: {exc}")
            return
        if not can_rate:
            return
        assert ctx.conc_unit is not None  # narrowed by can_rate
        exact = requested.rate.value
        ctx.requested = ctx.new = rate_to_dose(exact, ctx.unit, conc, ctx.conc_unit, ctx.weight)
    ctx.exact_rate = exact
    rate = _round_toward_safety(ctx, exact) if current_ok else round_rate(exact, ctx.resolution)
    ctx.rate = rate
    if rate != exact or requested.dose is not None:
        # the dose delivered at the rate, computed from the rate even when the requested dose
        # mapped exactly onto a step: dose -> rate -> dose may differ from the request in the
        # 28th digit, and the verdict must not depend on whether the dose or its rate was asked
        ctx.new = _delivered(ctx, rate)


def _delivered(ctx: Context, rate: Decimal) -> Decimal:
    """The canonical dose a pump rate delivers from this bag."""
    assert ctx.conc_unit is not None  # only called once the rate is known
    conc = ctx.request.infusion.concentration.value
    return rate_to_dose(rate, ctx.unit, conc, ctx.conc_unit, ctx.weight)


def _limits(ctx: Context) -> list[Limit]:
    """Every limit the rounding may cross, with its tier (see the module docstring)."""
    sev = ctx.drug.severity_of
    soft = min(_TIER[sev("SOFT_MAX")], _TIER[sev("SOFT_MIN")])
    return [
        (0, lambda c, rate, _dose: limits.pump_ok(c, rate)),
        (0, lambda c, _rate, dose: limits.hard_ok(c, dose)),
        (soft, lambda c, _rate, dose: limits.soft_ok(c, dose)),
        (_TIER[sev("START_RANGE")], lambda c, _rate, dose: limits.start_ok(c, dose)),
        (_TIER[sev("STEP_UP_WINDOW")], lambda c, _rate, dose: history.step_up_ok(c, dose)),
        (_TIER[sev("ABRUPT_STOP")], lambda c, _rate, dose: history.taper_ok(c, dose)),
        (_TIER[sev("RENAL_DOSE_DOPAMINE")], lambda c, _rate, dose: limits.renal_ok(c, dose)),
        (_TIER[sev("MAINTENANCE_RANGE")], lambda c, _rate, dose: limits.maintenance_ok(c, dose)),
    ]


def _round_toward_safety(ctx: Context, exact: Decimal) -> Decimal:
    """The pump rate for an exact rate: see "Rate rounding, toward safety" above."""
    resolution = ctx.resolution
    steps = exact / resolution
    below = steps.to_integral_value(rounding=ROUND_FLOOR)
    if below == steps:
        return exact
    low = below * resolution
    high = low + resolution
    if low <= 0:
        return high  # never round a positive request down to a stop
    nearest, other = (high, low) if steps - below >= _HALF else (low, high)
    requested = ctx.requested
    assert requested is not None  # set before the rate is rounded
    sides = [(tier, ok, ok(ctx, exact, requested)) for tier, ok in _limits(ctx)]
    candidates = ((nearest, _delivered(ctx, nearest)), (other, _delivered(ctx, other)))
    for top in _ALL_TIERS:
        for rate, dose in candidates:
            if all(ok(ctx, rate, dose) is side for tier, ok, side in sides if tier <= top):
                return rate
    return nearest
