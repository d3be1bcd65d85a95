"""Severity order and the exact documented verdict JSON shape."""

from __future__ import annotations

import json
from decimal import Decimal

from protocol.verdict import Finding, Outcome, Quantity, Severity, Verdict, outcome_of
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
