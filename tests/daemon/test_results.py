"""daemon/base/results.py: the named constructors give the contract's shapes, every result
they can build is valid against infusiond.pump.command.result/1 and reads back equal, and the
outcome the journal keeps for an id round-trips too, or names the field that is malformed."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.errors import PayloadError
from daemon.base.paths import journal_path
from daemon.base.quantities import Quantity
from daemon.base.results import (
    PENDING,
    CommandResult,
    DeviceBefore,
    ErrorBody,
    ErrorCode,
    FirstOutcome,
    KeptOutcome,
    Phase,
    Readback,
    VerdictJson,
)
from daemon.base.timefmt import at_ms
from daemon.journal import Journal
from daemon.mqtt.command_parse import Rejection, parse_command

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas"
NOW = datetime(2026, 11, 26, 17, 30, 0, tzinfo=UTC)
#: the codes of a write's end: never those of a rejection (the schema lists those)
WRITE_END = {
    ErrorCode.NOT_SENT,
    ErrorCode.DEVICE_REJECTED,
    ErrorCode.DEVICE_TIMEOUT,
    ErrorCode.INTERRUPTED,
}


def validator() -> Draft202012Validator:
    path = SCHEMA / "infusiond.pump.command.result-1.json"
    return Draft202012Validator(json.loads(path.read_text()))


def published(result: CommandResult) -> Any:
    """The result's envelope as a consumer decodes it."""
    body = envelope(
        Kind.PUMP_COMMAND_RESULT,
        gateway="demo",
        session="9f1c2a7be04d5531",
        seq=7,
        ts=NOW,
        data=result.to_json(),
    )
    return json.loads(encode(body))


def test_result_builders_produce_the_contract_shapes() -> None:
    """Builders give {id, phase, verdict?, error?, readback?}; duplicate carries first."""
    verdict = VerdictJson({"verdict": "reject", "findings": [{"rule": "HARD_MAX"}]})
    r = parse_command(b"{", now=NOW)
    assert isinstance(r, Rejection)
    assert CommandResult.rejected(None, error=r.error()).to_json() == {
        "id": None,
        "phase": "rejected",
        "error": {"code": "bad_json", "message": r.message},
    }
    assert CommandResult.rejected("c", verdict=verdict).to_json()["verdict"] == verdict.data
    with pytest.raises(ValueError, match="exactly one"):
        CommandResult.rejected("c")
    busy = CommandResult.rejected("c", error=ErrorBody(ErrorCode.BUSY, "pump-1 is executing c-0"))
    assert busy.to_json()["error"] == {"code": "busy", "message": "pump-1 is executing c-0"}
    confirm = CommandResult.needs_confirmation(
        "c", verdict=verdict, confirm_token="tok", expires_at=NOW
    ).to_json()
    assert confirm["confirm_token"] == "tok"
    assert confirm["confirm_expires_at"] == "2026-11-26T17:30:00.000Z"
    assert CommandResult.accepted("c").to_json() == {"id": "c", "phase": "accepted"}
    readback = Readback("infusing", Quantity.rate(63), None)
    assert CommandResult.applied("c", readback=readback).to_json()["readback"] == {
        "status": "infusing",
        "rate": {"value": 63.0, "unit": "mL/h"},
        "dose": None,
    }
    failed = CommandResult.failed("c", error=ErrorBody(ErrorCode.DEVICE_REJECTED, "m"))
    assert failed.to_json() == {
        "id": "c",
        "phase": "failed",
        "error": {"code": "device_rejected", "message": "m"},
    }
    timeout = ErrorBody(ErrorCode.DEVICE_TIMEOUT, "m")
    assert CommandResult.uncertain("c", error=timeout).to_json()["phase"] == "uncertain"
    first = KeptOutcome.of("pump-1", "fp", busy).first
    assert first.to_json() == {
        "phase": "rejected",
        "error": busy.to_json()["error"],
        "pump": "pump-1",
    }
    assert CommandResult.duplicate("c", first=first).to_json() == {
        "id": "c",
        "phase": "duplicate",
        "first": first.to_json(),
    }
    # a known id whose first command has no outcome yet is never told an empty first (the
    # contract's first requires a phase): the gate refuses that repeat instead
    with pytest.raises(ValueError, match="first outcome"):
        CommandResult.duplicate("c", first=PENDING.first)


def test_a_piv_answer_carries_its_order_and_a_restart_its_flags() -> None:
    """``source``/``order_id``/``command`` for an order; ``reconciled``/``repeated`` only when
    true; the kept outcome keeps the journal's private keys out of what a duplicate is told."""
    verdict = VerdictJson({"verdict": "confirm", "findings": []})
    asked = CommandResult.needs_confirmation(
        "piv-1", verdict=verdict, confirm_token="t", expires_at=NOW
    ).for_order("ORD-1", {"id": "piv-1"})
    assert asked.to_json() == {
        "id": "piv-1",
        "phase": "needs_confirmation",
        "verdict": verdict.data,
        "confirm_token": "t",
        "confirm_expires_at": "2026-11-26T17:30:00.000Z",
        "source": "piv",
        "order_id": "ORD-1",
        "command": {"id": "piv-1"},
    }
    readback = Readback("stopped", Quantity.rate(0), Quantity(0.0, "ug/kg/min"))
    before = DeviceBefore("infusing", 5.0, ("occlusion",))
    applied = CommandResult.applied("c", readback=readback)
    kept = KeptOutcome.of("pump-1", "fp", applied, before).marked_sending()
    assert kept.to_json() == {
        "phase": "applied",
        "pump": "pump-1",
        "fingerprint": "fp",
        "readback": readback.to_json(),
        "before": {"status": "infusing", "rate": 5.0, "alarms": ["occlusion"]},
        "sending": True,
    }
    assert kept.repeated("c").to_json() == {
        "id": "c",
        "phase": "applied",
        "readback": readback.to_json(),
        "repeated": True,
    }
    assert CommandResult.duplicate("c", first=kept.first).to_json()["first"] == {
        "phase": "applied",
        "pump": "pump-1",
    }


# -- every result: schema-valid, and read back equal ----------------------------------------

texts = st.text(min_size=1, max_size=64)
amounts = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
quantities = st.builds(Quantity, amounts, st.text(min_size=1, max_size=16))
rates = st.builds(Quantity.rate, amounts)
verdicts = st.builds(
    lambda kind, rate, rules: VerdictJson(
        {
            "verdict": kind,
            "rate": None if rate is None else rate.to_json(),
            "findings": [
                {"rule": rule, "severity": "reject", "message": f"{rule} says no"} for rule in rules
            ],
        }
    ),
    st.sampled_from(["accept", "confirm", "reject"]),
    st.none() | rates,
    st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True), max_size=3),
)
refusal_errors = st.builds(
    ErrorBody, st.sampled_from([c for c in ErrorCode if c not in WRITE_END]), st.text()
)
end_errors = st.builds(ErrorBody, st.sampled_from(ErrorCode), st.text())
readbacks = st.builds(Readback, st.text(max_size=16), rates, st.none() | quantities)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(at_ms)
firsts = st.builds(
    FirstOutcome,
    st.sampled_from([p for p in Phase if p is not Phase.DUPLICATE]),
    st.none() | verdicts,
    st.none() | end_errors,
    st.none() | texts,
)


@st.composite
def results(draw: st.DrawFn) -> CommandResult:
    """Any result the daemon can publish, each phase with what the contract requires."""
    cid = draw(texts)
    phase = draw(st.sampled_from(Phase))
    if phase is Phase.REJECTED:
        if draw(st.booleans()):
            result = CommandResult.rejected(draw(st.none() | texts), error=draw(refusal_errors))
        else:
            result = CommandResult.rejected(cid, verdict=draw(verdicts))
    elif phase is Phase.NEEDS_CONFIRMATION:
        result = CommandResult.needs_confirmation(
            cid,
            verdict=draw(verdicts),
            confirm_token=draw(st.text(min_size=1, max_size=128)),
            expires_at=draw(instants),
        )
    elif phase is Phase.ACCEPTED:
        result = CommandResult.accepted(cid, verdict=draw(st.none() | verdicts))
    elif phase is Phase.APPLIED:
        result = CommandResult.applied(cid, readback=draw(readbacks))
    elif phase is Phase.FAILED:
        result = CommandResult.failed(
            cid, error=draw(end_errors), readback=draw(st.none() | readbacks)
        )
    elif phase is Phase.UNCERTAIN:
        result = CommandResult.uncertain(cid, error=draw(end_errors))
    else:
        result = CommandResult.duplicate(cid, first=draw(firsts))
    if phase in {Phase.APPLIED, Phase.FAILED, Phase.UNCERTAIN} and draw(st.booleans()):
        result = replace(result, reconciled=draw(st.booleans()), repeated=draw(st.booleans()))
    if result.id is not None and draw(st.booleans()):
        command = {"id": result.id} if phase is Phase.NEEDS_CONFIRMATION else None
        result = result.for_order(draw(texts), command)
    return result


@settings(max_examples=300, deadline=None)
@given(results())
def test_every_result_is_schema_valid_and_reads_back_equal(result: CommandResult) -> None:
    """to_json -> the published bytes validate against the schema -> from_json is equal."""
    body = published(result)
    errors = [e.message for e in validator().iter_errors(body)]
    assert errors == [], errors
    assert CommandResult.from_json(body["data"]) == result


@settings(max_examples=200, deadline=None)
@given(
    results(),
    texts,
    st.text(max_size=32),
    st.none()
    | st.builds(
        DeviceBefore,
        st.text(max_size=16),
        amounts,
        st.lists(st.text(max_size=16), max_size=3).map(tuple),
    ),
    st.booleans(),
)
def test_a_kept_outcome_reads_back_equal(
    result: CommandResult, pump: str, fp: str, before: DeviceBefore | None, sending: bool
) -> None:
    """What the journal stores for an id is what it reads back (through its JSON bytes)."""
    kept = KeptOutcome.of(pump, fp, result, before)
    kept = kept.marked_sending() if sending else kept
    assert KeptOutcome.from_json(json.loads(encode(kept.to_json()))) == kept


# -- malformed stored outcomes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "field"),
    [
        ({"pump": "pump-1"}, "phase: required"),
        ({"phase": "exploded"}, "phase: expected one of rejected, .*, got 'exploded'"),
        ({"phase": "rejected", "error": {"code": "bad_json"}}, "error.message"),
        ({"phase": "failed", "error": {"code": "oops", "message": "m"}}, "error.code"),
        ({"phase": "accepted", "verdict": "accept"}, "verdict: expected an object"),
        ({"phase": "applied", "readback": {"status": "infusing"}}, "readback.rate"),
        ({"phase": "accepted", "before": {"status": "infusing", "rate": "5"}}, "before.rate"),
        ({"phase": "accepted", "sending": "yes"}, "sending: expected true or false"),
        ({"phase": "accepted", "pump": 7}, "pump: expected a string"),
    ],
)
def test_a_malformed_kept_outcome_names_its_field(stored: dict[str, Any], field: str) -> None:
    """Reading a stored outcome that is not one raises PayloadError naming the field."""
    with pytest.raises(PayloadError, match=f"outcome\\.{field}"):
        KeptOutcome.from_json(stored)


def test_a_malformed_kept_outcome_in_the_journal_fails_naming_the_command_and_field(
    tmp_path: Path,
) -> None:
    """A tampered ``commands.first`` is not guessed from: a duplicate's claim and the restart's
    scan of interrupted commands both raise PayloadError naming the id and the field."""
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        with journal.transaction():
            journal.claim_command("c-1", pump_id="pump-1", command={"id": "c-1"}, ts=NOW)
            accepted = KeptOutcome.of("pump-1", "fp", CommandResult.accepted("c-1"))
            journal.set_command_outcome("c-1", accepted, pump_id="pump-1", ts=NOW)
    finally:
        journal.close()
    with sqlite3.connect(journal_path(tmp_path)) as conn:
        conn.execute(
            "UPDATE commands SET first=? WHERE id='c-1'",
            (json.dumps({"phase": "accepted", "before": {"status": "infusing"}}),),
        )
    journal = Journal.open(tmp_path, gateway_id="gw")
    try:
        where = r"journal commands\['c-1'\]\.first\.before\.rate: expected a number"
        with pytest.raises(PayloadError, match=where):
            journal.interrupted_commands()
        with pytest.raises(PayloadError, match=where), journal.transaction():
            journal.claim_command("c-1", pump_id="pump-1", command={}, ts=NOW + timedelta(1))
    finally:
        journal.close()
