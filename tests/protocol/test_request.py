"""Malformed requests raise RequestError naming the field path; good ones parse exactly."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from protocol.errors import RequestError
from protocol.request import parse_request, parse_request_json
from tests.protocol.builders import make


def _error(mutate: Any) -> str:
    req = make()
    mutate(req)
    with pytest.raises(RequestError) as exc:
        parse_request(req)
    return str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda r: r["requested"]["dose"].update(value=float("nan")),
            "requested.dose.value: must be a finite number",
        ),
        (
            lambda r: r["requested"]["dose"].update(value=float("inf")),
            "requested.dose.value: must be a finite number",
        ),
        (
            lambda r: r["requested"]["dose"].update(value=-0.01),
            "requested.dose.value: must be >= 0",
        ),
        (
            lambda r: r["requested"]["dose"].update(value="lots"),
            "requested.dose.value: must be a number",
        ),
        (
            lambda r: r["infusion"]["concentration"].update(value=0),
            "infusion.concentration.value: must be > 0",
        ),
        (lambda r: r["patient"].update(weight_kg=-70), "patient.weight_kg: must be > 0"),
        (lambda r: r.update(now="2026-11-26T10:00:00"), "now: must have a time zone"),
        (lambda r: r.update(now="yesterday"), "now: must be an RFC 3339 date-time"),
        (lambda r: r.pop("profile"), "profile: is required"),
        (
            lambda r: r["infusion"].update(route="arterial"),
            "infusion.route: must be 'central' or 'peripheral'",
        ),
        (lambda r: r.update(requested={}), 'requested: give exactly one of "dose", "rate"'),
        (lambda r: r["requested"].update(action="stop"), "requested: give exactly one"),
        (lambda r: r.update(requested={"action": "pause"}), "requested.action: must be 'stop'"),
        (
            lambda r: r.update(history=[{"at": "2026-11-26T09:00:00Z", "dose": {"value": 1}}]),
            "history[0].dose.unit: is required",
        ),
        (
            lambda r: r.update(
                vitals={"map": {"value": 70, "unit": "kPa", "at": "2026-11-26T09:59:00Z"}}
            ),
            "vitals: map.unit must be 'mm[Hg]'",
        ),
        (lambda r: r.update(colour="blue"), "colour: is not a known field"),
        (
            lambda r: r.update(other_infusions=[{"drug": ""}]),
            "other_infusions[0].drug: must not be empty",
        ),
        (
            lambda r: r.update(pump={"min_rate": 10, "max_rate": 5}),
            "pump: min_rate is above max_rate",
        ),
    ],
)
def test_error_names_the_field(mutate: Any, expected: str) -> None:
    """Each malformed field is named with its path in the error."""
    assert _error(mutate).startswith(expected)


def test_json_level_errors() -> None:
    """Not JSON, not an object, too large: RequestError saying so."""
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_request_json("{nope")
    with pytest.raises(RequestError, match="must be a JSON object"):
        parse_request_json("[1, 2]")
    with pytest.raises(RequestError, match="larger than"):
        parse_request_json(b" " * 70_000)
    text = json.dumps(make()).replace('"value": 0.06', '"value": NaN')
    with pytest.raises(RequestError, match="finite number"):
        parse_request_json(text)


def test_floats_become_exact_decimals() -> None:
    """0.06 arrives as Decimal('0.06'), not the binary float's expansion."""
    req = parse_request(make())
    assert req.requested.dose is not None
    assert req.requested.dose.value == Decimal("0.06")


def test_aliases_accepted_for_vitals_units() -> None:
    """mmHg is accepted for mm[Hg]."""
    r = make()
    r["vitals"]["map"]["unit"] = "mmHg"
    assert parse_request(r).vitals is not None


def test_vitals_unit_aliases_are_canonicalised_and_wrong_units_named() -> None:
    """An alias becomes the canonical code (from a dict and from JSON text alike), and a unit
    that is wrong even after canonicalisation is named with its canonical spelling."""
    r = make()
    r["vitals"]["map"]["unit"] = "mmHg"
    for parsed in (parse_request(r), parse_request_json(json.dumps(r))):
        assert parsed.vitals is not None
        assert parsed.vitals.map is not None
        assert parsed.vitals.map.unit == "mm[Hg]"
    r["vitals"]["hr"] = {"value": 90, "unit": "mmHg", "at": r["vitals"]["map"]["at"]}
    with pytest.raises(RequestError, match=r"hr\.unit must be '/min', not 'mm\[Hg\]'"):
        parse_request_json(json.dumps(r))


def test_numbers_are_capped() -> None:
    """Absurd magnitudes are refused (every number must survive a round trip to a JSON float)."""
    r = make()
    r["requested"]["dose"]["value"] = 1e300
    with pytest.raises(RequestError, match=r"requested\.dose\.value: must be <= 1000000"):
        parse_request(r)
    with pytest.raises(RequestError, match=r"requested\.dose\.value: must be a finite number"):
        parse_request_json(json.dumps(make()).replace('"value": 0.06', '"value": 1e400'))
    r = make(weight=2000)
    with pytest.raises(RequestError, match=r"patient\.weight_kg: must be <= 1000"):
        parse_request(r)
