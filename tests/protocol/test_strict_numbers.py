"""Numbers are numbers: a numeric field of a check request from outside (JSON text, or a decoded
JSON object) must be a JSON number. Strings, booleans, NaN, infinities and values past the cap
are bad input naming the field; nothing is coerced. Trusted Python callers (the gate) may still
pass Decimal objects or decimal strings through ``parse_request``."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.engine import evaluate
from protocol.errors import RequestError
from protocol.request import parse_request, parse_request_json, parse_untrusted_request
from tests.protocol.builders import dose, make, shipped, ts
from tests.protocol.test_cli_protocol import infusiond

MARK = "@@number@@"


def full_request() -> dict[str, Any]:
    """A request with every numeric field present."""
    return make(
        patient={"baseline_sbp": 150},
        history=[{"at": ts(300), "dose": dose("0.05", "ug/kg/min")}],
        others=[{"drug": "vasopressin", "dose": dose("0.03", "[USP'U]/min")}],
        pump={"min_rate": 0.1, "max_rate": 999.99, "resolution": 0.01},
    )


PATHS = [
    ("patient", "weight_kg"),
    ("patient", "baseline_sbp"),
    ("infusion", "concentration", "value"),
    ("current", "value"),
    ("requested", "dose", "value"),
    ("history", 0, "dose", "value"),
    ("vitals", "map", "value"),
    ("other_infusions", 0, "dose", "value"),
    ("pump", "min_rate"),
    ("pump", "max_rate"),
    ("pump", "resolution"),
]


def dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def with_value(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    req = full_request()
    node: Any = req
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return req


def json_with(path: tuple[str | int, ...], token: str) -> str:
    """The request as JSON text with ``token`` written verbatim at ``path``."""
    return json.dumps(with_value(path, MARK)).replace(f'"{MARK}"', token)


def test_the_full_request_is_valid() -> None:
    """The base request of this module parses and gets a verdict (so errors are the field's)."""
    parse_request_json(json.dumps(full_request()))


BAD_TOKENS = ['"0.05"', '"70"', "true", "false", "NaN", "Infinity", "-Infinity", "1e10", "1e400"]


@pytest.mark.parametrize("path", PATHS, ids=dotted)
@pytest.mark.parametrize("token", BAD_TOKENS)
def test_a_non_number_in_json_names_the_field(path: tuple[str | int, ...], token: str) -> None:
    """Every numeric field refuses strings, booleans, NaN, infinities and huge values."""
    with pytest.raises(RequestError) as err:
        parse_request_json(json_with(path, token))
    assert str(err.value).startswith(dotted(path) + ": ")
    if token.startswith('"'):
        assert "must be a number, not a string" in str(err.value)


@pytest.mark.parametrize("path", PATHS, ids=dotted)
@pytest.mark.parametrize("value", ["0.05", True, False])
def test_a_decoded_json_object_gets_no_coercion_either(
    path: tuple[str | int, ...], value: Any
) -> None:
    """parse_untrusted_request (e.g. a decoded MQTT payload) refuses str and bool numbers."""
    with pytest.raises(RequestError) as err:
        parse_untrusted_request(with_value(path, value))
    assert str(err.value).startswith(f"{dotted(path)}: must be a number")


@settings(max_examples=150)
@given(text=st.text(max_size=12))
def test_any_string_as_a_dose_is_bad_input(text: str) -> None:
    """Property: whatever the string (even a valid decimal), a quoted dose is refused."""
    with pytest.raises(RequestError, match=r"^requested\.dose\.value: must be a number"):
        parse_request_json(json_with(("requested", "dose", "value"), json.dumps(text)))


def test_trusted_callers_may_pass_decimal_or_str_and_get_the_same_verdict() -> None:
    """The gate builds requests in Python with Decimal (preferred) or str values: they parse
    exactly and give the verdict of the same request sent as JSON numbers."""
    as_json = evaluate(shipped(), parse_request_json(json.dumps(full_request())))
    for kind in (Decimal, str):
        req = full_request()
        req["requested"]["dose"]["value"] = kind("0.06")
        req["current"]["value"] = kind("0.05")
        req["patient"]["weight_kg"] = kind("70")
        req["pump"] = {
            "min_rate": kind("0.1"),
            "max_rate": kind("999.99"),
            "resolution": kind("0.01"),
        }
        verdict = evaluate(shipped(), parse_request(req))
        assert verdict.to_dict() == as_json.to_dict()


def test_trusted_callers_still_cannot_pass_booleans_or_nan() -> None:
    """Even the trusted door refuses booleans, NaN and infinities."""
    for bad in (True, Decimal("NaN"), Decimal("Infinity"), "NaN"):
        with pytest.raises(RequestError, match=r"^requested\.dose\.value: "):
            parse_request(with_value(("requested", "dose", "value"), bad))


def test_deep_nesting_is_bad_input_not_a_crash() -> None:
    """A hostile, deeply nested document is a RequestError, not a RecursionError."""
    with pytest.raises(RequestError):
        parse_request_json("[" * 30_000 + "]" * 30_000)


def test_check_cli_exits_2_naming_a_quoted_number() -> None:
    """`infusiond check` with "value": "0.05": exit 2, nothing on stdout, the field on stderr."""
    proc = infusiond("check", stdin=json_with(("requested", "dose", "value"), '"0.05"'))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "requested.dose.value: must be a number, not a string ('0.05')" in proc.stderr
    proc = infusiond("check", stdin=json_with(("pump", "max_rate"), "true"))
    assert proc.returncode == 2
    assert "pump.max_rate: must be a number, not true" in proc.stderr


@pytest.mark.parametrize("kind", ["dose", "rate"])
def test_a_number_that_underflows_to_zero_is_not_a_stop(kind: str) -> None:
    """1e-400 reads as 0.0 in a float, and 0 means stop: it is bad input, not a stop."""
    req = make(rate=1.0) if kind == "rate" else make()
    text = json.dumps(req).replace(
        json.dumps(req["requested"]), f'{{"{kind}": {{"value": 1e-400, "unit": "mL/h"}}}}'
    )
    if kind == "dose":
        text = text.replace('"mL/h"}}', '"ug/kg/min"}}')
    with pytest.raises(RequestError, match=rf"^requested\.{kind}\.value: 1E-400 is neither 0"):
        parse_request_json(text)
    stop = parse_request_json(text.replace("1e-400", "0.0"))
    assert evaluate(shipped(), stop).rate == 0
