"""The per-request state every rule reads: resolved profile/drug, canonical doses, findings.

The engine builds one :class:`Context` per request after resolving units; rule functions take
it, read what they need and call :meth:`Context.add`. Nothing here is shared between requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from protocol.library import Drug, DrugFacts, Profile
from protocol.request import Amount, CheckRequest
from protocol.units import (
    ConcentrationUnit,
    DoseUnit,
    UnitError,
    close,
    convert_dose,
    dose_unit,
)
from protocol.verdict import Finding, Quantity, fmt

_ZERO = Decimal(0)


@dataclass(slots=True)
class Context:
    """Everything the rules need about one request, doses in the drug's canonical unit.

    ``requested`` is the dose asked for (for a request by rate, the dose of that exact rate);
    ``new`` is the dose delivered at ``rate``, the pump rate rounded to the pump's resolution
    (they are equal when the rate is not known). Every rule judges ``new``; the hard limits
    also judge ``requested`` (rounding never rescues a request). ``current`` is ``None`` for
    a new infusion; ``stop`` is true for ``action: stop`` and for a requested dose or rate of
    zero. ``pump_min``/``pump_max``/``resolution`` are the pump's (request, else library).
    """

    request: CheckRequest
    profile: Profile
    drug: Drug
    unit: DoseUnit
    weight: Decimal | None
    facts: DrugFacts
    pump_min: Decimal
    pump_max: Decimal
    resolution: Decimal
    conc_base: Decimal | None = None  # base amount (ug or USP units) per mL
    conc_unit: ConcentrationUnit | None = None
    current: Decimal | None = None
    requested: Decimal | None = None
    new: Decimal | None = None
    stop: bool = False
    rate: Decimal | None = None
    exact_rate: Decimal | None = None
    # (lowest dose in the window, allowed increase) of STEP_UP_WINDOW once computed (None if
    # the rule does not apply or the history cannot be read); step_up_known says it was.
    step_up: tuple[Decimal, Decimal] | None = None
    step_up_known: bool = False
    # Set by compare_doses() once ``new`` and ``current`` are final (the rules read them often).
    increase: bool = False
    decrease: bool = False
    findings: list[Finding] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    @property
    def name(self) -> str:
        """The drug as the library spells it."""
        return self.drug.drug

    def q(self, value: Decimal) -> Quantity:
        """A dose quantity in the drug's canonical unit."""
        return Quantity(value, self.unit.code)

    def dose_text(self, value: Decimal) -> str:
        """``0.06 ug/kg/min``."""
        return f"{fmt(value)} {self.unit.code}"

    def add(
        self,
        rule: str,
        message: str,
        limit: Quantity | None = None,
        observed: Quantity | None = None,
    ) -> None:
        """Record a finding with this drug's severity for ``rule`` (once per rule and message)."""
        marker = (rule, message)
        if marker in self._seen:
            return
        self._seen.add(marker)
        self.findings.append(Finding(rule, self.drug.severity_of(rule), message, limit, observed))

    @property
    def base(self) -> Decimal:
        """The dose running now (0 for a new infusion)."""
        return self.current if self.current is not None else _ZERO

    def rises(self, dose: Decimal) -> bool:
        """Whether ``dose`` is above the running dose (0 for a new infusion)."""
        base = self.current if self.current is not None else _ZERO
        return dose > base and not close(dose, base)

    def compare_doses(self) -> None:
        """Set :attr:`increase` (the request raises the dose; starting an infusion raises it
        from 0) and :attr:`decrease` (it lowers a running dose, a stop included) from the final
        ``new`` and ``current``: once, before the rules that ask."""
        new, current = self.new, self.current
        if new is None:
            self.increase = self.decrease = False
            return
        base = current if current is not None else _ZERO
        self.increase = new > base and not close(new, base)
        self.decrease = current is not None and new < current and not close(new, current)

    def other_dose(self, other: Amount, target: DoseUnit) -> Decimal | None:
        """Another channel's dose in ``target`` units, or ``None`` if it cannot be converted."""
        try:
            return convert_dose(other.value, dose_unit(other.unit), target, self.weight)
        except UnitError:
            return None

    def others_named(self, drug: str) -> list[Amount | None]:
        """Doses of the other infusions of ``drug``, matched through the substance vocabulary
        (``noradrenaline`` is norepinephrine); ``None`` where no dose was given."""
        ident = self.facts.vocabulary.ident
        wanted = self.facts.key if drug == self.drug.drug else ident(drug)
        return [o.dose for o in self.request.other_infusions if ident(o.drug) == wanted]
