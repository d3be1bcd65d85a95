"""The OBX code and unit tables of ``codes.toml``, loaded once and looked up by value.

Data, not code: another monitor vendor's identifiers are new rows in the TOML file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from drivers.hl7.sample import CANONICAL_UNIT, Parameter

#: spellings of the coding system in OBX-3.3 / OBX-3.6 mapped to the table's system names
_SYSTEM_ALIASES = {"MDC": "MDC", "LN": "LN", "LOINC": "LN", "": ""}


@dataclass(frozen=True, slots=True)
class CodeEntry:
    """One observation identifier that maps to a parameter."""

    parameter: Parameter
    system: str  # "MDC" or "LN"
    code: str
    name: str
    rank: int

    @property
    def tag(self) -> str:
        """``SYSTEM:code``, e.g. ``MDC:150039``."""
        return f"{self.system}:{self.code}"


@dataclass(frozen=True, slots=True)
class UnitEntry:
    """A canonical UCUM unit, its spellings and the plausible value range in it."""

    ucum: str
    mdc: str  # MDC dimension code, e.g. "266016"
    mdc_name: str  # e.g. "MDC_DIM_MMHG"
    spellings: frozenset[str]
    parameters: frozenset[Parameter]
    minimum: Decimal
    maximum: Decimal


@dataclass(frozen=True, slots=True)
class CodeTables:
    """Lookups built from ``codes.toml``."""

    by_system_code: Mapping[tuple[str, str], CodeEntry]
    by_code: Mapping[str, CodeEntry]  # codes, and MDC reference ids (MDC_...)
    units: Sequence[UnitEntry]

    def find_code(self, components: Sequence[str]) -> CodeEntry | None:
        """Match an OBX-3 CE/CWE (identifier^text^system^alt-id^alt-text^alt-system)."""
        padded = [*components, "", "", "", "", "", ""][:6]
        for raw_ident, text, system in ((padded[0], padded[1], padded[2]), padded[3:6]):
            sys_name = _SYSTEM_ALIASES.get(system.strip().upper())
            ident = raw_ident.strip()
            if sys_name is None or not ident:
                continue
            entry = (
                self.by_system_code.get((sys_name, ident)) if sys_name else self.by_code.get(ident)
            )
            for name in (ident, text.strip()):  # an MDC reference id such as MDC_PRESS_CUFF_MEAN
                if entry is None and sys_name in ("MDC", "") and name.startswith("MDC_"):
                    entry = self.by_code.get(name)
            if entry is not None:
                return entry
        return None

    def find_unit(self, components: Sequence[str]) -> UnitEntry | None:
        """Match an OBX-6 CE (``mm[Hg]^mm[Hg]^UCUM`` or ``266016^MDC_DIM_MMHG^MDC``)."""
        candidates = [c.strip() for c in components[:2] if c.strip()]
        for unit in self.units:
            if any(c in unit.spellings for c in candidates):
                return unit
        return None

    def code_for(self, parameter: Parameter, system: str) -> CodeEntry:
        """The preferred (lowest rank, first listed) code of a parameter in a coding system."""
        rows = [e for e in self.by_system_code.values() if e.parameter is parameter]
        return min((e for e in rows if e.system == system), key=lambda e: e.rank)

    def unit_for(self, parameter: Parameter) -> UnitEntry:
        """The unit entry of a parameter's canonical unit."""
        canonical = CANONICAL_UNIT[parameter]
        return next(u for u in self.units if u.ucum == canonical)


def _build(raw: Mapping[str, Any]) -> CodeTables:
    by_system_code: dict[tuple[str, str], CodeEntry] = {}
    by_code: dict[str, CodeEntry] = {}
    for group in raw["codes"]:
        parameter = Parameter(group["parameter"])
        for row in group["entries"]:
            entry = CodeEntry(parameter, row["system"], row["code"], row["name"], int(row["rank"]))
            key = (entry.system, entry.code)
            if key in by_system_code:
                raise ValueError(f"codes.toml: duplicate code {entry.tag}")
            by_system_code[key] = entry
            by_code[entry.code] = entry
            if entry.name.startswith("MDC_"):
                by_code[entry.name] = entry
    units = [
        UnitEntry(
            ucum=row["ucum"],
            mdc=row["mdc"][0],
            mdc_name=row["mdc_name"],
            spellings=frozenset([row["ucum"], *row["aliases"], *row["mdc"]]),
            parameters=frozenset(Parameter(p) for p in row["parameters"]),
            minimum=Decimal(str(row["range"]["min"])),
            maximum=Decimal(str(row["range"]["max"])),
        )
        for row in raw["units"]
    ]
    for parameter, ucum in CANONICAL_UNIT.items():
        if not any(u.ucum == ucum and parameter in u.parameters for u in units):
            raise ValueError(f"codes.toml: no unit row {ucum!r} for {parameter.value}")
    return CodeTables(by_system_code, by_code, tuple(units))


@cache
def code_tables() -> CodeTables:
    """The shipped tables (parsed on first use)."""
    text = resources.files("drivers.hl7").joinpath("codes.toml").read_text(encoding="utf-8")
    return _build(tomllib.loads(text))
