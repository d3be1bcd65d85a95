"""Consistency of a loaded library (``infusiond library check``, docs/check.md).

The loader already guarantees the shape (types, known units, known rule ids). This module
checks what a well-typed library can still get wrong, and recomputes every ``[[examples]]``
row. Each problem has a stable ``LIB_*`` id and a message naming profile, drug and field:

========================== ==========================================================
LIB_START_OUTSIDE_SOFT     start range not within the soft range
LIB_SOFT_OUTSIDE_HARD      soft range not within the hard range
LIB_RANGE_OUTSIDE_HARD     maintenance / escalation / taper / renal-dose value beyond hard
LIB_UNIT_INCONVERTIBLE     a concentration or prerequisite unit cannot meet the dose unit
LIB_CONC_ABOVE_ROUTE_MAX   a standard concentration above the maximum of every route
LIB_ROUTE_MAX_ORDER        peripheral maximum above the central maximum
LIB_DILUENT_CONFLICT       a diluent both allowed and forbidden, or a standard bag's
                           diluent that the drug does not allow
LIB_UNKNOWN_REFERENCE      prerequisite / first-line alternative / advised drug that the
                           profile does not define, or ``first_line = false`` without any
LIB_EXAMPLE_UNKNOWN        an example naming a profile or drug that does not exist
LIB_EXAMPLE_UNIT           an example whose units cannot be converted (or lack a weight)
LIB_EXAMPLE_RATE           an example that does not compute to its ``expect_rate``
LIB_EXAMPLE_DOSE           an example that does not convert to its ``expect_dose``
LIB_UNKNOWN_SUBSTANCE      a drug, diluent, incompatible, prerequisite, first-line or
                           advised name that the substance vocabulary does not know
                           (it could never match what a request names)
========================== ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from protocol.library import Drug, Example, Library, Profile, Range, RouteMax, key
from protocol.substances import Vocabulary
from protocol.units import (
    CONCENTRATION_UNITS,
    UnitError,
    concentration_unit,
    convert_dose,
    dose_to_rate,
    dose_unit,
    le,
    within,
)
from protocol.verdict import fmt


@dataclass(frozen=True, slots=True)
class LibraryProblem:
    """One inconsistency: a ``LIB_*`` id and a message naming where it is."""

    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """``{"rule", "message"}`` for ``library check --json``."""
        return {"rule": self.rule, "message": self.message}


def check_library(library: Library) -> list[LibraryProblem]:
    """Every consistency problem of ``library``, in file order (empty list = consistent)."""
    problems: list[LibraryProblem] = []
    for profile in library.profiles:
        for drug in profile.drugs:
            problems.extend(_check_drug(profile, drug, library.vocabulary))
            problems.extend(_check_substances(library.vocabulary, profile, drug))
    for index, example in enumerate(library.examples, start=1):
        problems.extend(_check_example(library, index, example))
    return problems


def _where(profile: Profile, drug: Drug, field: str) -> str:
    return f"profile {profile.id!r}, drug {drug.drug!r}, field {field!r}"


def _range(r: Range, unit: str) -> str:
    return f"{fmt(r.min)}-{fmt(r.max)} {unit}"


def _check_drug(profile: Profile, drug: Drug, vocabulary: Vocabulary) -> list[LibraryProblem]:
    out: list[LibraryProblem] = []
    unit = drug.dose_unit

    def add(rule: str, field: str, text: str) -> None:
        out.append(LibraryProblem(rule, f"{_where(profile, drug, field)}: {text}"))

    if drug.start is not None and not _inside(drug.start, drug.soft):
        add(
            "LIB_START_OUTSIDE_SOFT",
            "start",
            f"start {_range(drug.start, unit)} is not within soft {_range(drug.soft, unit)}",
        )
    if not _inside(drug.soft, drug.hard):
        add(
            "LIB_SOFT_OUTSIDE_HARD",
            "soft",
            f"soft {_range(drug.soft, unit)} is not within hard {_range(drug.hard, unit)}",
        )
    hard = drug.hard
    if drug.maintenance is not None and not _inside(drug.maintenance, hard):
        add("LIB_RANGE_OUTSIDE_HARD", "maintenance", "maintenance range is not within hard")
    for field, value in (
        ("escalation.at", drug.escalation.at if drug.escalation else None),
        ("taper.stop_from_above", drug.taper.stop_from_above if drug.taper else None),
        ("renal_dose_max", drug.renal_dose_max),
        ("step_up.max_increase", drug.step_up.max_increase if drug.step_up else None),
    ):
        if value is not None and not le(value, hard.max):
            add(
                "LIB_RANGE_OUTSIDE_HARD",
                field,
                f"{fmt(value)} {unit} is above the hard maximum {fmt(hard.max)} {unit}",
            )
    out.extend(_check_concentrations(profile, drug, vocabulary))
    out.extend(_check_references(profile, drug))
    return out


def _inside(inner: Range, outer: Range) -> bool:
    return within(inner.min, outer.min, outer.max) and within(inner.max, outer.min, outer.max)


def _route_max_base(route_max: RouteMax) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for route in ("central", "peripheral"):
        q = getattr(route_max, route)
        if q is not None:
            out[route] = q.value * CONCENTRATION_UNITS[q.unit].factor
    return out


def _check_concentrations(
    profile: Profile, drug: Drug, vocabulary: Vocabulary
) -> list[LibraryProblem]:
    out: list[LibraryProblem] = []
    amount = dose_unit(drug.dose_unit).amount

    def add(rule: str, field: str, text: str) -> None:
        out.append(LibraryProblem(rule, f"{_where(profile, drug, field)}: {text}"))

    maxima = _route_max_base(drug.max_concentration)
    for route in ("central", "peripheral"):
        q = getattr(drug.max_concentration, route)
        if q is not None and concentration_unit(q.unit).amount is not amount:
            add(
                "LIB_UNIT_INCONVERTIBLE",
                f"max_concentration.{route}.unit",
                f"{q.unit} cannot hold a dose in {drug.dose_unit}",
            )
    if "peripheral" in maxima and "central" in maxima and maxima["peripheral"] > maxima["central"]:
        add(
            "LIB_ROUTE_MAX_ORDER",
            "max_concentration",
            "the peripheral maximum is above the central maximum",
        )
    allowed = {vocabulary.ident(d) for d in drug.diluents.allowed}
    forbidden = {vocabulary.ident(d) for d in drug.diluents.forbidden}
    for both in sorted(allowed & forbidden):
        add("LIB_DILUENT_CONFLICT", "diluents", f"{both!r} is both allowed and forbidden")
    for i, conc in enumerate(drug.concentrations):
        field = f"concentrations[{i}]"
        row = CONCENTRATION_UNITS[conc.unit]
        if row.amount is not amount:
            add(
                "LIB_UNIT_INCONVERTIBLE",
                f"{field}.unit",
                f"{conc.unit} cannot hold a dose in {drug.dose_unit}",
            )
            continue
        base = conc.value * row.factor
        if maxima and not any(le(base, m) for m in maxima.values()):
            add(
                "LIB_CONC_ABOVE_ROUTE_MAX",
                field,
                f"{fmt(conc.value)} {conc.unit} is above the maximum concentration of every route",
            )
        if conc.diluent is not None:
            dk = vocabulary.ident(conc.diluent)
            if dk in forbidden or (allowed and dk not in allowed):
                add(
                    "LIB_DILUENT_CONFLICT",
                    f"{field}.diluent",
                    f"standard bag diluent {conc.diluent!r} is not allowed for this drug",
                )
    return out


def _check_references(profile: Profile, drug: Drug) -> list[LibraryProblem]:
    out: list[LibraryProblem] = []
    names = {key(d.drug): d for d in profile.drugs}

    def add(field: str, text: str) -> None:
        out.append(
            LibraryProblem("LIB_UNKNOWN_REFERENCE", f"{_where(profile, drug, field)}: {text}")
        )

    if drug.prerequisite is not None:
        other = names.get(key(drug.prerequisite.drug))
        if other is None:
            add("prerequisite.drug", f"{drug.prerequisite.drug!r} is not in this profile")
        elif (
            dose_unit(other.dose_unit).amount
            is not dose_unit(drug.prerequisite.min_dose.unit).amount
        ):
            out.append(
                LibraryProblem(
                    "LIB_UNIT_INCONVERTIBLE",
                    f"{_where(profile, drug, 'prerequisite.min_dose.unit')}: "
                    f"{drug.prerequisite.min_dose.unit} does not convert to "
                    f"{other.drug}'s {other.dose_unit}",
                )
            )
    if not drug.first_line and not drug.first_line_alternatives:
        add("first_line_alternatives", "first_line = false needs first_line_alternatives")
    for alt in drug.first_line_alternatives:
        if key(alt) not in names:
            add("first_line_alternatives", f"{alt!r} is not in this profile")
    advise = drug.escalation.advise_drug if drug.escalation is not None else None
    if advise is not None and key(advise) not in names:
        add("escalation.advise_drug", f"{advise!r} is not in this profile")
    return out


def _substance_fields(drug: Drug) -> list[tuple[str, str]]:
    """(field, name) for every substance name of a drug entry, in file order."""
    fields = [("drug", drug.drug)]
    fields += [
        (f"concentrations[{i}].diluent", c.diluent or "") for i, c in enumerate(drug.concentrations)
    ]
    fields += [(f"diluents.allowed[{i}]", n) for i, n in enumerate(drug.diluents.allowed)]
    fields += [(f"diluents.forbidden[{i}]", n) for i, n in enumerate(drug.diluents.forbidden)]
    fields += [(f"incompatible[{i}]", n) for i, n in enumerate(drug.incompatible)]
    if drug.prerequisite is not None:
        fields.append(("prerequisite.drug", drug.prerequisite.drug))
    fields += [
        (f"first_line_alternatives[{i}]", n) for i, n in enumerate(drug.first_line_alternatives)
    ]
    if drug.escalation is not None and drug.escalation.advise_drug is not None:
        fields.append(("escalation.advise_drug", drug.escalation.advise_drug))
    return [(field, name) for field, name in fields if name]


def _check_substances(vocabulary: Vocabulary, profile: Profile, drug: Drug) -> list[LibraryProblem]:
    """LIB_UNKNOWN_SUBSTANCE for every name the vocabulary does not know."""
    return [
        LibraryProblem(
            "LIB_UNKNOWN_SUBSTANCE",
            f"{_where(profile, drug, field)}: {name!r} is not in the substance vocabulary "
            f"({vocabulary.source}); use one of its names or add the substance there",
        )
        for field, name in _substance_fields(drug)
        if not vocabulary.knows(name)
    ]


def _check_example(library: Library, index: int, example: Example) -> list[LibraryProblem]:
    label = f"example #{index} ({example.profile}/{example.drug})"
    drug = library.drug(example.profile, example.drug)
    if drug is None:
        return [
            LibraryProblem(
                "LIB_EXAMPLE_UNKNOWN",
                f"{label}: profile {example.profile!r} has no drug {example.drug!r}",
            )
        ]
    weight = example.weight_kg
    try:
        unit = dose_unit(drug.dose_unit)
        dose = convert_dose(example.dose.value, dose_unit(example.dose.unit), unit, weight)
        conc_unit = concentration_unit(example.concentration.unit)
        rate = dose_to_rate(dose, unit, example.concentration.value, conc_unit, weight)
    except UnitError as exc:
        return [LibraryProblem("LIB_EXAMPLE_UNIT", f"{label}: {exc}")]
    out: list[LibraryProblem] = []
    given = f"{fmt(example.dose.value)} {example.dose.unit}"
    if weight is not None:
        given += f" x {fmt(weight)} kg"
    given += f" at {fmt(example.concentration.value)} {example.concentration.unit}"
    if example.expect_rate is not None and not _near(
        rate, example.expect_rate.value, example.tolerance
    ):
        out.append(
            LibraryProblem(
                "LIB_EXAMPLE_RATE",
                f"{label}: {given} computes to {fmt(rate)} mL/h, "
                f"not the expected {fmt(example.expect_rate.value)} mL/h",
            )
        )
    if example.expect_dose is not None:
        try:
            other = convert_dose(dose, unit, dose_unit(example.expect_dose.unit), weight)
        except UnitError as exc:
            out.append(LibraryProblem("LIB_EXAMPLE_UNIT", f"{label}: expect_dose: {exc}"))
        else:
            if not _near(other, example.expect_dose.value, example.tolerance):
                out.append(
                    LibraryProblem(
                        "LIB_EXAMPLE_DOSE",
                        f"{label}: {given} is {fmt(other)} {example.expect_dose.unit}, "
                        f"not the expected {fmt(example.expect_dose.value)} "
                        f"{example.expect_dose.unit}",
                    )
                )
    return out


def _near(computed: Decimal, expected: Decimal, tolerance: Decimal) -> bool:
    slack = max(abs(expected) * tolerance, Decimal("1e-9"))
    return abs(computed - expected) <= slack
