"""The CQI report's typed facts: a verdict, a library change and an override are read once from
their JSON (journal row or stored jsonb), round-trip, and a malformed one is a PayloadError
naming the row and the field instead of a programming counted as nothing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.base.errors import PayloadError
from daemon.base.quantities import Quantity
from daemon.journal.records import JournalKind, JournalRow
from daemon.pharmacy.report import journal_facts, override_fact
from daemon.pharmacy.report_facts import Judged, LibraryChangeSeen, VerdictSeen
from daemon.pharmacy.report_items import LibraryChangeItem, ObservedItem
from daemon.pharmacy.report_model import Report, Window
from protocol.verdict import LibraryIdentity, Outcome

TS = "2026-12-01T08:00:00.000Z"
LIB = LibraryIdentity("vasopressors", "2026.12.1", "a" * 64)

rules = st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True), max_size=4)
quantities = st.none() | st.builds(
    Quantity,
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(("mL/h", "ug/kg/min", "[USP'U]/min")),
)
verdicts = st.builds(
    VerdictSeen,
    st.sampled_from(Outcome),
    rules.map(tuple),
    st.none() | st.just(LIB),
    quantities,
    quantities,
)


@given(verdicts)
def test_a_verdict_round_trips_through_its_json(verdict: VerdictSeen) -> None:
    assert VerdictSeen.from_json(json.loads(json.dumps(verdict.to_json())), where="v") == verdict


def row(n: int, kind: JournalKind, payload: dict[str, object]) -> JournalRow:
    return JournalRow(n, TS, kind, "pump-1", payload, "0" * 64, "1" * 64)


def test_a_verdict_row_is_read_into_its_outcome_library_and_rules() -> None:
    verdict = {
        "verdict": "confirm",
        "rate": {"value": 45.0, "unit": "mL/h"},
        "dose": None,
        "findings": [{"rule": "SOFT_MAX", "severity": "confirm", "message": "m"}],
        "library": LIB.to_dict(),
    }
    [fact] = journal_facts(row(3, JournalKind.VERDICT, {"id": "c-1", "verdict": verdict}))
    assert fact == Judged(
        TS, "pump-1", "c-1", VerdictSeen(Outcome.CONFIRM, ("SOFT_MAX",), LIB, Quantity.rate(45))
    )


@pytest.mark.parametrize(
    ("verdict", "field"),
    [
        (None, "journal row 7: verdict: expected a verdict object"),
        ({"verdict": "maybe"}, "journal row 7: verdict.verdict: expected accept"),
        ({"verdict": "accept", "findings": [{"severity": "info"}]}, "verdict.findings[0].rule"),
        ({"verdict": "accept", "library": {"name": "x"}}, "verdict.library: a library needs"),
        ({"verdict": "accept", "rate": {"value": "fast"}}, "verdict.rate.value"),
    ],
)
def test_a_malformed_verdict_row_names_the_row_and_the_field(verdict: object, field: str) -> None:
    """Before, a verdict without a known outcome counted as a programming of no kind."""
    with pytest.raises(PayloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
        journal_facts(row(7, JournalKind.VERDICT, {"id": "c-1", "verdict": verdict}))


def test_a_malformed_event_names_the_row() -> None:
    bad = {"seq": 4, "event": {"type": "out_of_library_observed", "verdict": "reject"}}
    with pytest.raises(PayloadError, match=r"journal row 9: event\.verdict"):
        journal_facts(row(9, JournalKind.EVENT, bad))
    with pytest.raises(PayloadError, match="journal row 9: event: expected an object"):
        journal_facts(row(9, JournalKind.EVENT, {"seq": 4, "event": [1]}))


def test_an_override_names_a_clinician_that_is_not_a_string() -> None:
    payload = {"command_id": "c-1", "clinician": 7, "reason": "why", "findings": []}
    with pytest.raises(PayloadError, match=r"row 2\.clinician"):
        override_fact(TS, "pump-1", payload, "row 2")


def test_a_library_change_sets_the_program_and_is_listed_once_as_it_always_was() -> None:
    """Every pump journals the change; the list holds it once, its libraries in the key order
    the report has always published (as its sources store them)."""
    event = {
        "type": "library_changed",
        "from": None,
        "to": LIB.to_dict(),
        "via": "sighup",
        "drug": "norepinephrine",
        "profile": "adult-icu",
    }
    fact = LibraryChangeSeen.from_json(TS, "pump-1", event, "event")
    assert fact.program == ("norepinephrine", "adult-icu")
    report = Report(window=Window(), gateway="gw-a")
    report.take(fact)
    report.take(LibraryChangeSeen.from_json(TS, "pump-2", event, "event"))
    assert report.library_changes == [LibraryChangeItem("gw-a", TS, None, LIB, "sighup", None)]
    assert json.dumps(report.library_changes[0].to_json()) == json.dumps(
        {
            "gateway": "gw-a",
            "ts": TS,
            "from": None,
            "to": {"name": LIB.name, "sha256": LIB.sha256, "version": LIB.version},
            "via": "sighup",
            "by": None,
        }
    )
    with pytest.raises(PayloadError, match=r"event\.via: expected a string"):
        LibraryChangeSeen.from_json(TS, "pump-1", {**event, "via": 3}, "event")


def test_an_observed_item_lists_its_quantities_unit_first_as_stored() -> None:
    item = ObservedItem(
        None, TS, "pump-1", "d", "p", ("SOFT_MIN",), Outcome.CONFIRM, Quantity.rate(5), None
    )
    assert json.dumps(item.to_json()["rate"]) == '{"unit": "mL/h", "value": 5.0}'
