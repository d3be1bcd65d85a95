"""Severity order and the exact documented verdict JSON shape."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.verdict import (
    Finding,
    LibraryIdentity,
    Outcome,
    Quantity,
    Severity,
    Verdict,
    outcome_of,
)
from tests.protocol.builders import check, make


def test_severity_order() -> None:
    """Severities are ordered info < advisory < confirm < reject."""
    assert Severity.INFO < Severity.ADVISORY < Severity.CONFIRM < Severity.REJECT
    assert max(Severity) is Severity.REJECT
    assert sorted([Severity.REJECT, Severity.INFO]) == [Severity.INFO, Severity.REJECT]


def test_outcome_is_the_most_severe_finding() -> None:
    """Info/advisory -> accept, any confirm -> confirm, any reject -> reject."""

    def f(sev: Severity) -> Finding:
        return Finding("X", sev, "m")

    assert outcome_of([]) is Outcome.ACCEPT
    assert outcome_of([f(Severity.INFO), f(Severity.ADVISORY)]) is Outcome.ACCEPT
    assert outcome_of([f(Severity.ADVISORY), f(Severity.CONFIRM)]) is Outcome.CONFIRM
    assert outcome_of([f(Severity.CONFIRM), f(Severity.REJECT)]) is Outcome.REJECT


def test_verdict_json_shape() -> None:
    """Keys and value types are exactly the documented ones and survive json.dumps."""
    verdict = check(make(new="1.5", conc=(16, "ug/mL"), vitals_=None))  # SOFT_MAX + VITALS_STALE
    out = json.loads(json.dumps(verdict.to_dict()))
    assert set(out) == {"verdict", "rate", "dose", "findings", "library"}
    assert out["verdict"] == "confirm"
    assert out["rate"] == {"value": 393.75, "unit": "mL/h"}
    assert out["dose"] == {"value": 1.5, "unit": "ug/kg/min"}
    assert [f["rule"] for f in out["findings"]] == ["SOFT_MAX", "VITALS_STALE"]
    soft = out["findings"][0]
    assert set(soft) == {"rule", "severity", "message", "limit", "observed"}
    assert soft["severity"] == "confirm"
    assert soft["limit"] == {"value": 1.0, "unit": "ug/kg/min"}
    assert soft["observed"] == {"value": 1.5, "unit": "ug/kg/min"}
    stale = out["findings"][1]
    assert stale["severity"] == "advisory"
    assert "observed" not in stale
    assert set(out["library"]) == {"name", "version", "sha256"}


def test_quantity_text_is_compact() -> None:
    """Messages show 0.06, not 0.0600000 or 6E-2."""
    assert str(Quantity(Decimal("0.0600"), "ug/kg/min")) == "0.06 ug/kg/min"
    assert str(Quantity(Decimal("63.00"), "mL/h")) == "63 mL/h"
    assert str(Quantity(Decimal(1) / Decimal(3), "mL/h")) == "0.333333 mL/h"
    v = Verdict(Outcome.ACCEPT, None, None, (), check(make()).library)
    assert v.to_dict()["rate"] is None


def test_findings_at_least_selects_what_an_observed_change_must_report() -> None:
    """A front-panel drop judged as a request by rate: findings_at_least(CONFIRM) returns the
    confirm and reject findings (most severe first) and leaves advisories out."""
    # 0.05 -> 0.005 ug/kg/min (5.25 mL/h at 4 ug/mL), no recent BP: SOFT_MIN + VITALS_STALE.
    verdict = check(make(rate=5.25, vitals_=None))
    assert {f.rule for f in verdict.findings} == {"SOFT_MIN", "VITALS_STALE"}
    assert [f.rule for f in verdict.findings_at_least(Severity.CONFIRM)] == ["SOFT_MIN"]
    assert [f.rule for f in verdict.findings_at_least(Severity.REJECT)] == []
    assert len(verdict.findings_at_least(Severity.INFO)) == 2
    hard = check(make(rate=999.99, conc=(64, "ug/mL")))  # 15.2 ug/kg/min: HARD_MAX
    assert hard.findings_at_least(Severity.CONFIRM)[0].rule == "HARD_MAX"


# Any text (control characters, quotes, non-ASCII, lone surrogates) and any finite or infinite
# Decimal, including ones beyond the double range (json.dumps writes those as Infinity).
_numbers = st.decimals(allow_nan=False, allow_infinity=True)
_quantities = st.builds(Quantity, _numbers, st.text())
_findings = st.builds(
    Finding,
    st.text(),
    st.sampled_from(Severity),
    st.text(),
    st.none() | _quantities,
    st.none() | _quantities,
)
_verdicts = st.builds(
    Verdict,
    st.sampled_from(Outcome),
    st.none() | _numbers,
    st.none() | _quantities,
    st.lists(_findings, max_size=4).map(tuple),
    st.builds(LibraryIdentity, st.text(), st.text(), st.text()),
)


@settings(max_examples=300)
@given(verdict=_verdicts, ensure_ascii=st.booleans())
def test_json_text_is_json_dumps_of_to_dict(verdict: Verdict, ensure_ascii: bool) -> None:
    """The directly written verdict JSON (``infusiond check``'s output) is byte for byte what
    json.dumps makes of the documented dict, in both escaping modes."""
    expected = json.dumps(verdict.to_dict(), ensure_ascii=ensure_ascii)
    assert verdict.json_text(ensure_ascii=ensure_ascii) == expected


def test_json_text_of_real_verdicts() -> None:
    """Accept, confirm (two findings with limit and observed, one without) and reject verdicts,
    and one whose message carries non-ASCII text."""
    verdicts = [
        check(make()),
        check(make(new="1.5", conc=(16, "ug/mL"), vitals_=None)),
        check(make(rate=999.99, conc=(64, "ug/mL"))),
        check(make(diluent="Glucose 5 % µ")),
    ]
    assert {v.verdict for v in verdicts} == {"accept", "confirm", "reject"}
    for verdict in verdicts:
        for ensure_ascii in (True, False):
            expected = json.dumps(verdict.to_dict(), ensure_ascii=ensure_ascii)
            assert verdict.json_text(ensure_ascii=ensure_ascii) == expected
