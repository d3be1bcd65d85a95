"""Units: the documented canonical codes and aliases, exact conversions, tolerant limits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.units import (
    ALIASES,
    CONCENTRATION_UNITS,
    DOSE_UNITS,
    UnitError,
    canonical,
    close,
    concentration_unit,
    convert_concentration,
    convert_dose,
    dose_to_rate,
    dose_unit,
    ge,
    le,
    rate_to_dose,
    rate_unit,
    within,
)

D = Decimal

DOCUMENTED_ALIASES = {
    "ug/kg/min": ["mcg/kg/min", "µg/kg/min"],
    "ug/min": ["mcg/min", "µg/min"],
    "mg/h": ["mg/hr"],
    "[USP'U]/min": ["U/min", "units/min"],
    "mL/h": ["ml/h", "mL/hr"],
    "ug/mL": ["mcg/mL", "µg/mL"],
}
PLAIN = ["mg/mL", "[USP'U]/mL", "mL", "kg", "mm[Hg]", "/min", "%"]


@pytest.mark.parametrize(
    ("alias", "code"), [(a, c) for c, aliases in DOCUMENTED_ALIASES.items() for a in [c, *aliases]]
)
def test_documented_aliases_canonicalise(alias: str, code: str) -> None:
    """Every documented alias maps to its UCUM canonical code."""
    assert canonical(alias) == code


@pytest.mark.parametrize("code", PLAIN)
def test_plain_codes_are_canonical(code: str) -> None:
    """Codes without aliases are accepted as they are."""
    assert canonical(code) == code


def test_every_alias_targets_a_known_unit() -> None:
    """The alias table never points at a unit the converter does not know."""
    for target in ALIASES.values():
        assert canonical(target) == target


def test_unknown_units_are_errors() -> None:
    """Unknown units, and units of the wrong kind, raise UnitError with the unit named."""
    with pytest.raises(UnitError, match="furlong"):
        canonical("furlong/min")
    with pytest.raises(UnitError, match="not a dose unit"):
        dose_unit("ug/mL")
    with pytest.raises(UnitError, match="not a concentration unit"):
        concentration_unit("mg/h")
    with pytest.raises(UnitError, match="not a pump rate"):
        rate_unit("mL/min")
    with pytest.raises(UnitError, match="cannot convert"):
        convert_dose(D(1), dose_unit("ug/min"), dose_unit("[USP'U]/min"))
    with pytest.raises(UnitError, match="weight"):
        convert_dose(D(1), dose_unit("ug/kg/min"), dose_unit("ug/min"))


def test_worked_example_pinned() -> None:
    """0.02 ug/kg/min x 70 kg at 4 ug/mL = 1.4 ug/min = 21.0 mL/h = 0.084 mg/h, exactly."""
    w = D(70)
    kgmin = dose_unit("ug/kg/min")
    assert convert_dose(D("0.02"), kgmin, dose_unit("ug/min"), w) == D("1.4")
    assert convert_dose(D("0.02"), kgmin, dose_unit("mg/h"), w) == D("0.084")
    assert dose_to_rate(D("0.02"), kgmin, D(4), concentration_unit("ug/mL"), w) == D("21.0")
    assert dose_to_rate(D("0.02"), kgmin, D("0.004"), concentration_unit("mg/mL"), w) == D("21.0")
    assert rate_to_dose(D("21.0"), kgmin, D(4), concentration_unit("ug/mL"), w) == D("0.02")


@pytest.mark.parametrize(
    ("dose", "unit", "conc", "conc_unit", "weight", "rate"),
    [
        ("0.03", "[USP'U]/min", "0.2", "[USP'U]/mL", None, "9"),
        ("0.5", "mg/h", "16", "ug/mL", None, "31.25"),
        ("8", "ug/min", "4", "ug/mL", None, "120"),
        ("0.1", "ug/kg/min", "16", "ug/mL", "20", "7.5"),
        ("5", "ug/kg/min", "1.6", "mg/mL", "80", "15"),
        ("1", "mg/min", "1", "mg/mL", None, "60"),
        ("60", "ug/h", "1", "ug/mL", None, "60"),
        ("0.6", "[USP'U]/h", "0.2", "[USP'U]/mL", None, "3"),
        ("6", "ug/kg/h", "4", "ug/mL", "10", "15"),
        ("0.006", "mg/kg/h", "4", "ug/mL", "10", "15"),
        ("0.001", "[USP'U]/kg/min", "1", "[USP'U]/mL", "50", "3"),
    ],
)
def test_dose_to_rate_table(
    dose: str, unit: str, conc: str, conc_unit: str, weight: str | None, rate: str
) -> None:
    """Every dose unit of the table converts to the exact mL/h."""
    w = D(weight) if weight else None
    got = dose_to_rate(D(dose), dose_unit(unit), D(conc), concentration_unit(conc_unit), w)
    assert got == D(rate)


def test_every_table_row_is_exercised() -> None:
    """The table test above covers every dose unit (so a new row cannot go untested)."""
    covered = {
        "[USP'U]/min",
        "mg/h",
        "ug/min",
        "ug/kg/min",
        "mg/min",
        "ug/h",
        "[USP'U]/h",
        "ug/kg/h",
        "mg/kg/h",
        "[USP'U]/kg/min",
    }
    assert covered == set(DOSE_UNITS)
    assert set(CONCENTRATION_UNITS) == {"ug/mL", "mg/mL", "[USP'U]/mL"}


def test_limits_are_inclusive_and_noise_tolerant() -> None:
    """0.04 is not above 0.04; float noise (0.1*0.4) is not above it; 0.0401 is."""
    noisy = D(str(0.1 * 0.4))
    assert le(D("0.04"), D("0.04"))
    assert le(noisy, D("0.04"))
    assert not le(D("0.0401"), D("0.04"))
    assert ge(D("0.039999999999999"), D("0.04"))
    assert within(D(3), D(0), D(3))
    assert not within(D("3.000001"), D(0), D(3))
    assert close(D(1) / D(3) * D(3), D(1))


positive = st.decimals(min_value=D("0.0001"), max_value=D(10000), places=4)


@given(
    value=positive,
    a=st.sampled_from(sorted(DOSE_UNITS)),
    b=st.sampled_from(sorted(DOSE_UNITS)),
    weight=st.decimals(min_value=D("0.5"), max_value=D(300), places=2),
)
def test_dose_conversion_round_trips(value: Decimal, a: str, b: str, weight: Decimal) -> None:
    """a -> b -> a returns the same dose (within 1e-9 relative) whenever a and b convert."""
    ua, ub = dose_unit(a), dose_unit(b)
    if ua.amount is not ub.amount:
        return
    there = convert_dose(value, ua, ub, weight)
    assert close(convert_dose(there, ub, ua, weight), value)


@given(
    value=positive,
    unit=st.sampled_from(sorted(DOSE_UNITS)),
    conc=positive,
    weight=st.decimals(min_value=D("0.5"), max_value=D(300), places=2),
)
def test_dose_rate_round_trips(value: Decimal, unit: str, conc: Decimal, weight: Decimal) -> None:
    """dose -> mL/h -> dose is the identity (within 1e-9 relative)."""
    u = dose_unit(unit)
    cu = concentration_unit("ug/mL" if u.amount.value == "mass" else "[USP'U]/mL")
    rate = dose_to_rate(value, u, conc, cu, weight)
    assert close(rate_to_dose(rate, u, conc, cu, weight), value)


@given(value=positive)
def test_concentration_round_trip(value: Decimal) -> None:
    """ug/mL -> mg/mL -> ug/mL is exact."""
    ug, mg = concentration_unit("ug/mL"), concentration_unit("mg/mL")
    assert convert_concentration(convert_concentration(value, ug, mg), mg, ug) == value


_DECIMALS = st.decimals(
    min_value=-1_000_000, max_value=1_000_000, allow_nan=False, allow_infinity=False, places=12
)


@given(_DECIMALS, _DECIMALS, _DECIMALS)
def test_tolerant_comparisons_follow_their_definition(a: Decimal, b: Decimal, c: Decimal) -> None:
    """le/ge/close/within are exactly "within a relative 1e-9 of the other side", inclusive,
    with ge(a, b) == le(b, a) and within(v, lo, hi) == ge(v, lo) and le(v, hi)."""
    tol = Decimal("1e-9")

    def ref_le(x: Decimal, y: Decimal) -> bool:
        return x <= y or x - y <= tol * max(abs(x), abs(y))

    assert le(a, b) == ref_le(a, b)
    assert ge(a, b) == ref_le(b, a)
    assert close(a, b) == (abs(a - b) <= tol * max(abs(a), abs(b)))
    assert within(a, b, c) == (ref_le(b, a) and ref_le(a, c))
    assert le(a, a)
    assert ge(a, a)
    assert close(a, a)


@given(_DECIMALS, st.integers(min_value=-30, max_value=30))
def test_tolerant_comparisons_at_the_tolerance_edge(a: Decimal, k: int) -> None:
    """Near the 1e-9 edge (b = a + k * 1e-10 * a) the comparisons still follow the definition."""
    b = a + a * k * Decimal("1e-10")
    tol = Decimal("1e-9")
    assert le(b, a) == (b <= a or b - a <= tol * max(abs(b), abs(a)))
    assert ge(a, b) == le(b, a)
    assert close(a, b) == (abs(a - b) <= tol * max(abs(a), abs(b)))
