"""The drug library (docs/check.md): pydantic models, the TOML loader and the library identity.

A library is data. The loader parses TOML with every float as an exact Decimal, validates the
shape (unknown keys are errors, so a typo never silently disables a rule), canonicalises every
unit, and indexes profiles and drugs once, so the rule engine never re-parses anything per
request. Errors are :class:`~protocol.errors.LibraryError` naming the file, the profile, the
drug and the field. Semantic consistency (start within soft, examples computing to their
expected rate, ...) is the job of :mod:`protocol.consistency`.

Fields beyond the basic shape shown in docs/check.md (all optional; defaults keep the rule off
unless noted):

* drug ``maintenance`` range -> MAINTENANCE_RANGE advisory when a running infusion is titrated
  outside it;
* drug ``step_up = {window_h = 4, max_increase = 0.5, severity = "reject"}`` -> STEP_UP_WINDOW;
* drug ``prerequisite = {drug = "norepinephrine", min_dose = {value = 0.1, unit = "ug/kg/min"}}``
  -> VASOPRESSIN_PREREQ when starting or increasing without it;
* drug ``first_line = false`` with ``first_line_alternatives`` (drugs whose running infusion
  satisfies the rule) and ``first_line_reason`` -> NOT_FIRST_LINE;
* drug ``renal_dose_max`` -> RENAL_DOSE_DOPAMINE for doses at or below it;
* drug ``titrate_to_map`` (default true) -> the MAP/SBP rules apply to this drug;
* drug ``severity = {RULE_ID = "confirm", ...}`` per-drug severity overrides;
* drug ``escalation.advise_drug`` -> no ESCALATION_ADVISORY while that drug already runs;
* profile ``targets = {map_min, map_min_chronic_hypertension, map_max, sbp_below_baseline}``
  (defaults: the reference's 65 / 70 / 85 / 40 mmHg; an empty table turns the MAP rules off);
* profile ``vitals_max_age_min`` (default 15) for VITALS_STALE;
* example ``expect_dose`` (the same dose in another unit) and ``tolerance`` (relative);
* top-level ``pump_default = {min_rate, max_rate, resolution}`` (mL/h): the pump assumed by a
  check request that carries no ``pump`` (and for each field a ``pump`` leaves out); without it,
  0.1-999.99 mL/h at 0.01 mL/h.

Substance names (drug names, diluents, ``incompatible``, prerequisite and first-line drugs) are
matched through the substance vocabulary (:mod:`protocol.substances`); the lookups are
precomputed per drug when the library is loaded.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.errors import LibraryError
from protocol.rule_ids import AT_LEAST_CONFIRM, DEFAULT_SEVERITY, FIXED
from protocol.substances import Vocabulary, shipped_vocabulary
from protocol.units import (
    CONCENTRATION_UNITS,
    DoseUnit,
    UnitError,
    concentration_unit,
    dose_unit,
    rate_unit,
)
from protocol.verdict import LibraryIdentity, Severity

DEFAULT_LIBRARY_PATH: Final = Path(__file__).resolve().parent / "libraries" / "vasopressors.toml"
MAX_LIBRARY_BYTES: Final = 4 * 1024 * 1024

NonNegative = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[Decimal, Field(gt=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


def key(name: str) -> str:
    """How profile ids (and drug names within a profile) are matched: trimmed, case-insensitive.

    Substance names (line shares, diluents, other infusions) go through the vocabulary instead.
    """
    return name.strip().casefold()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Model):
    """An inclusive range ``min <= x <= max``; a bare number means ``min = max``."""

    min: NonNegative
    max: NonNegative

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, data: Any) -> Any:
        if isinstance(data, int | float | Decimal) and not isinstance(data, bool):
            return {"min": data, "max": data}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


def _unit_check(canonicalise: Callable[[str], str], unit: str) -> str:
    """The canonical code of ``unit``; a UnitError becomes a pydantic error on the field."""
    try:
        return canonicalise(unit)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


class DoseQuantity(_Model):
    """A dose with a dose unit (canonicalised)."""

    value: NonNegative
    unit: str

    @field_validator("unit")
    @classmethod
    def _unit(cls, unit: str) -> str:
        return _unit_check(lambda u: dose_unit(u).code, unit)


class ConcentrationQuantity(_Model):
    """A concentration with a concentration unit (canonicalised)."""

    value: Positive
    unit: str

    @field_validator("unit")
    @classmethod
    def _unit(cls, unit: str) -> str:
        return _unit_check(lambda u: concentration_unit(u).code, unit)


class RateQuantity(_Model):
    """A pump rate in mL/h."""

    value: NonNegative
    unit: str

    @field_validator("unit")
    @classmethod
    def _unit(cls, unit: str) -> str:
        return _unit_check(rate_unit, unit)


class StandardConcentration(ConcentrationQuantity):
    """One of a drug's standard concentrations, optionally with its usual diluent."""

    diluent: Name | None = None


class RouteMax(_Model):
    """Maximum concentration per route; a missing route means no route limit."""

    peripheral: ConcentrationQuantity | None = None
    central: ConcentrationQuantity | None = None


class Diluents(_Model):
    """Allowed diluents (empty = any not forbidden) and forbidden ones."""

    allowed: tuple[Name, ...] = ()
    forbidden: tuple[Name, ...] = ()


class Escalation(_Model):
    """At ``at`` (drug dose unit) or above with MAP below ``map_below``: advise ``advise``."""

    at: NonNegative
    map_below: NonNegative
    advise: Name
    advise_drug: Name | None = None


class Taper(_Model):
    """From above ``stop_from_above``, a stop or a drop by more than the fraction needs confirm."""

    max_drop_fraction: Fraction
    stop_from_above: NonNegative


class StepUp(_Model):
    """At most ``max_increase`` (drug dose unit) of total increase within ``window_h`` hours."""

    window_h: Positive = Decimal(4)
    max_increase: NonNegative
    severity: Severity = Severity.REJECT


class Prerequisite(_Model):
    """Starting or increasing needs ``drug`` running at ``min_dose`` or more."""

    drug: Name
    min_dose: DoseQuantity


class Targets(_Model):
    """Blood-pressure targets of a profile, mmHg; ``None`` switches the rule off."""

    map_min: NonNegative | None = None
    map_min_chronic_hypertension: NonNegative | None = None
    map_max: NonNegative | None = None
    sbp_below_baseline: NonNegative | None = None


REFERENCE_TARGETS: Final = Targets(
    map_min=Decimal(65),
    map_min_chronic_hypertension=Decimal(70),
    map_max=Decimal(85),
    sbp_below_baseline=Decimal(40),
)


class Drug(_Model):
    """One drug in one profile (``[[profiles.drugs]]``)."""

    drug: Name
    dose_unit: str
    first_line: bool = True
    first_line_alternatives: tuple[Name, ...] = ()
    first_line_reason: str = ""
    concentrations: tuple[StandardConcentration, ...] = Field(min_length=1)
    max_concentration: RouteMax = RouteMax()
    diluents: Diluents = Diluents()
    incompatible: tuple[Name, ...] = ()
    start: Range | None = None
    soft: Range
    hard: Range
    maintenance: Range | None = None
    escalation: Escalation | None = None
    taper: Taper | None = None
    step_up: StepUp | None = None
    prerequisite: Prerequisite | None = None
    renal_dose_max: NonNegative | None = None
    titrate_to_map: bool = True
    min_titration_interval_min: NonNegative | None = None
    severity: dict[str, Severity] = Field(default_factory=dict)

    @field_validator("dose_unit")
    @classmethod
    def _dose_unit(cls, unit: str) -> str:
        return _unit_check(lambda u: dose_unit(u).code, unit)

    @field_validator("severity")
    @classmethod
    def _severity(cls, overrides: dict[str, Severity]) -> dict[str, Severity]:
        for rule, sev in overrides.items():
            if rule not in DEFAULT_SEVERITY:
                raise ValueError(f"unknown rule id {rule!r}")
            if rule in FIXED and sev is not Severity.REJECT:
                raise ValueError(f"{rule} is always reject and cannot be set to {sev.value}")
            if rule in AT_LEAST_CONFIRM and sev < Severity.CONFIRM:
                raise ValueError(f"{rule} is at least confirm and cannot be set to {sev.value}")
        return overrides

    def severity_of(self, rule: str) -> Severity:
        """This drug's severity for ``rule``: ``severity`` override, else ``step_up.severity``
        for STEP_UP_WINDOW, else the shipped default of the rule catalogue."""
        override = self.severity.get(rule)
        if override is not None:
            return override
        if rule == "STEP_UP_WINDOW" and self.step_up is not None:
            return self.step_up.severity
        return DEFAULT_SEVERITY[rule]


class Profile(_Model):
    """A care area / patient type with its drugs."""

    id: Name
    weight_kg: Range | None = None
    vitals_max_age_min: Positive = Decimal(15)
    targets: Targets = REFERENCE_TARGETS
    drugs: tuple[Drug, ...] = Field(min_length=1)


class Example(_Model):
    """A worked example that ``infusiond library check`` recomputes."""

    profile: Name
    drug: Name
    dose: DoseQuantity
    weight_kg: Positive | None = None
    concentration: ConcentrationQuantity
    expect_rate: RateQuantity | None = None
    expect_dose: DoseQuantity | None = None
    tolerance: Annotated[Decimal, Field(ge=0, lt=1, allow_inf_nan=False)] = Decimal("0.001")
    note: str = ""

    @model_validator(mode="after")
    def _expects_something(self) -> Self:
        if self.expect_rate is None and self.expect_dose is None:
            raise ValueError("an example needs expect_rate or expect_dose")
        return self


MaxRate = Annotated[Decimal, Field(gt=0, le=1_000_000, allow_inf_nan=False)]


class PumpDefault(_Model):
    """The pump assumed when a check request names none: range and resolution in mL/h."""

    min_rate: Annotated[Decimal, Field(ge=0, le=1_000_000, allow_inf_nan=False)] = Decimal("0.1")
    max_rate: MaxRate = Decimal("999.99")
    resolution: MaxRate = Decimal("0.01")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_rate > self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate}) is above max_rate ({self.max_rate})")
        return self


class LibraryFile(_Model):
    """The shape of a library file, as validated by pydantic."""

    name: Name
    version: Name
    description: str = ""
    pump_default: PumpDefault = PumpDefault()
    profiles: tuple[Profile, ...] = Field(min_length=1)
    examples: tuple[Example, ...] = ()


@dataclass(frozen=True, slots=True)
class DrugFacts:
    """What the rules need of one (profile, drug), derived once when the library is loaded so
    no request recomputes it: the unit row, names as match keys, concentrations in base units.

    ``titration_interval`` is ``min_titration_interval_min`` as the shortest whole-microsecond
    span at least that long (exact: a whole-second elapsed time reaches one iff it reaches the
    other; ``timedelta.max`` if longer than any), ``None`` without the rule.
    ``route_max`` maps a route to its maximum concentration and that maximum in base amounts
    per mL; ``standard_bases`` are the standard concentrations in base amounts per mL.
    ``key`` and ``first_line_alternatives`` are vocabulary ids; ``forbidden_diluents``,
    ``allowed_diluents`` and ``incompatible`` are the normalised names
    (:func:`protocol.substances.normalise`) that meet the library's lists.
    """

    profile: Profile
    drug: Drug
    unit: DoseUnit
    key: str
    vitals_max_age: timedelta
    titration_interval: timedelta | None
    route_max: dict[str, tuple[ConcentrationQuantity, Decimal]]
    standard_bases: tuple[Decimal, ...]
    forbidden_diluents: frozenset[str]
    allowed_diluents: frozenset[str]
    incompatible: frozenset[str]
    first_line_alternatives: frozenset[str]
    vocabulary: Vocabulary


_MAX_MICROS: Final = timedelta.max // timedelta(microseconds=1)


def _span_at_least(minutes: Decimal | None) -> timedelta | None:
    """The shortest whole-microsecond ``timedelta`` of at least ``minutes * 60`` seconds (that
    Decimal product, as the rule computes it; then exact integers), ``timedelta.max`` when none
    is that long; ``None`` for ``None``."""
    if minutes is None:
        return None
    numerator, denominator = (minutes * 60).as_integer_ratio()
    micros = -(-numerator * 1_000_000 // denominator)  # ceiling division
    if micros >= _MAX_MICROS:
        return timedelta.max
    return timedelta(microseconds=micros)


def drug_facts(profile: Profile, drug: Drug, vocabulary: Vocabulary) -> DrugFacts:
    """Derive the :class:`DrugFacts` of ``drug`` in ``profile`` (units are already canonical)."""
    route_max = {
        route: (limit, limit.value * CONCENTRATION_UNITS[limit.unit].factor)
        for route, limit in (
            ("central", drug.max_concentration.central),
            ("peripheral", drug.max_concentration.peripheral),
        )
        if limit is not None
    }
    return DrugFacts(
        profile=profile,
        drug=drug,
        unit=dose_unit(drug.dose_unit),
        key=vocabulary.ident(drug.drug),
        vitals_max_age=timedelta(minutes=float(profile.vitals_max_age_min)),
        titration_interval=_span_at_least(drug.min_titration_interval_min),
        route_max=route_max,
        standard_bases=tuple(
            s.value * CONCENTRATION_UNITS[s.unit].factor for s in drug.concentrations
        ),
        forbidden_diluents=vocabulary.matching_keys(drug.diluents.forbidden, classes_meet=True),
        allowed_diluents=vocabulary.matching_keys(drug.diluents.allowed, classes_meet=False),
        incompatible=vocabulary.matching_keys(drug.incompatible, classes_meet=True),
        first_line_alternatives=frozenset(
            vocabulary.ident(a) for a in drug.first_line_alternatives
        ),
        vocabulary=vocabulary,
    )


@dataclass(frozen=True, slots=True)
class Library:
    """A loaded, indexed library; build it with :func:`load_library_bytes` (callers read the
    file: ``daemon.base.library_file.load_library``). A plain frozen dataclass (not a pydantic
    model) so that the per-request lookups are plain attribute and dict accesses."""

    name: str
    version: str
    description: str
    profiles: tuple[Profile, ...]
    examples: tuple[Example, ...]
    identity: LibraryIdentity
    source: str
    pump_default: PumpDefault
    vocabulary: Vocabulary
    pump_limits: tuple[Decimal, Decimal, Decimal]  # pump_default as (min, max, resolution)
    _profile_index: dict[str, Profile] = field(repr=False, compare=False)
    _drug_index: dict[tuple[str, str], Drug] = field(repr=False, compare=False)
    _facts_index: dict[tuple[str, str], DrugFacts] = field(repr=False, compare=False)

    def profile(self, profile_id: str) -> Profile | None:
        """The profile with this id (case-insensitive), or ``None``."""
        return self._profile_index.get(key(profile_id))

    def drug(self, profile_id: str, drug: str) -> Drug | None:
        """The drug entry in this profile (both case-insensitive), or ``None``."""
        return self._drug_index.get((key(profile_id), key(drug)))

    def facts(self, profile_id: str, drug: str) -> DrugFacts | None:
        """The derived :class:`DrugFacts` of this drug in this profile, or ``None``.

        The drug may be named by any vocabulary synonym (``noradrenaline``).
        """
        # The index also holds the names exactly as the library spells them, so the usual
        # request needs no key() normalisation.
        found = self._facts_index.get((profile_id, drug))
        if found is None:
            pk = key(profile_id)
            found = self._facts_index.get((pk, key(drug)))
            if found is None:
                found = self._facts_index.get((pk, "\0" + self.vocabulary.ident(drug)))
        return found


def load_library_bytes(data: bytes, source: str, vocabulary: Vocabulary | None = None) -> Library:
    """Validate and index a library from its file bytes; ``source`` names it in errors."""
    if len(data) > MAX_LIBRARY_BYTES:
        raise LibraryError(f"{source}: library file is larger than {MAX_LIBRARY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LibraryError(f"{source}: not UTF-8 at byte {exc.start}") from exc
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise LibraryError(f"{source}: invalid TOML: {exc}") from exc
    try:
        parsed = LibraryFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key also makes the real key "missing": name the typo first.
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")
        raise LibraryError(
            *(f"{source}: {describe_location(raw, e['loc'])}: {_error_text(e)}" for e in errors)
        ) from None
    profiles, drugs = _index(parsed, source)
    vocab = vocabulary if vocabulary is not None else shipped_vocabulary()
    return Library(
        name=parsed.name,
        version=parsed.version,
        description=parsed.description,
        profiles=parsed.profiles,
        examples=parsed.examples,
        identity=LibraryIdentity(
            name=parsed.name, version=parsed.version, sha256=hashlib.sha256(data).hexdigest()
        ),
        source=source,
        pump_default=parsed.pump_default,
        vocabulary=vocab,
        pump_limits=(
            parsed.pump_default.min_rate,
            parsed.pump_default.max_rate,
            parsed.pump_default.resolution,
        ),
        _profile_index=profiles,
        _drug_index=drugs,
        _facts_index=_facts(profiles, drugs, vocab),
    )


def _index(
    parsed: LibraryFile, source: str
) -> tuple[dict[str, Profile], dict[tuple[str, str], Drug]]:
    profiles: dict[str, Profile] = {}
    drugs: dict[tuple[str, str], Drug] = {}
    for profile in parsed.profiles:
        pk = key(profile.id)
        if pk in profiles:
            raise LibraryError(f"{source}: profile {profile.id!r}: field 'id': defined twice")
        profiles[pk] = profile
        for drug in profile.drugs:
            dk = (pk, key(drug.drug))
            if dk in drugs:
                raise LibraryError(
                    f"{source}: profile {profile.id!r}, drug {drug.drug!r}: "
                    "field 'drug': defined twice in this profile"
                )
            drugs[dk] = drug
    return profiles, drugs


def _facts(
    profiles: dict[str, Profile], drugs: dict[tuple[str, str], Drug], vocabulary: Vocabulary
) -> dict[tuple[str, str], DrugFacts]:
    """Facts by (key(profile), key(drug)), by the names exactly as the library spells them, and
    by (key(profile), NUL + vocabulary id) for a drug named by a synonym."""
    out: dict[tuple[str, str], DrugFacts] = {}
    for (pk, dk), drug in drugs.items():
        facts = drug_facts(profiles[pk], drug, vocabulary)
        out[(pk, dk)] = facts
        out.setdefault((facts.profile.id, drug.drug), facts)
        out.setdefault((pk, "\0" + facts.key), facts)
    return out


def _error_text(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field (typo?)"
    if error["type"] == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


def describe_location(raw: Any, loc: tuple[int | str, ...]) -> str:
    """``profile 'adult-icu', drug 'norepinephrine', field 'hard.max'`` for a pydantic loc."""
    parts: list[str] = []
    fields: list[str] = []
    node = raw
    i = 0
    while i < len(loc):
        step = loc[i]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if step in {"profiles", "drugs", "examples"} and isinstance(nxt, int) and not fields:
            item = _child(_child(node, step), nxt)
            label = {"profiles": "id", "drugs": "drug", "examples": "drug"}[step]
            name = item.get(label) if isinstance(item, dict) else None
            if step == "examples":
                parts.append(f"example #{nxt + 1}" + (f" ({name})" if name else ""))
            else:
                kind = "profile" if step == "profiles" else "drug"
                parts.append(f"{kind} {name!r}" if name else f"{kind} #{nxt + 1}")
            node = item
            i += 2
            continue
        fields.append(f"[{step}]" if isinstance(step, int) else str(step))
        node = _child(node, step)
        i += 1
    if fields:
        parts.append("field '" + ".".join(fields).replace(".[", "[") + "'")
    return ", ".join(parts) or "top level"


def _child(node: Any, step: int | str) -> Any:
    if isinstance(node, dict):
        return node.get(step)
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return node[step]
    return None
