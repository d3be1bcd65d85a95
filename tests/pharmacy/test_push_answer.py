"""The answer to a library push, typed inside and JSON at the edge: both shapes of its ``data``
validate against infusiond.bridge.library.response/1 in their envelope."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from daemon.base.envelope import Kind, encode, envelope
from daemon.pharmacy.reload import PushAnswer, PushRefusal
from protocol.verdict import LibraryIdentity

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs/schemas/infusiond.bridge.library.response-1.json").read_text(
        encoding="utf-8"
    )
)
LIBRARY = LibraryIdentity("icu", "2026.11", "ab" * 32)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def problems(answer: PushAnswer) -> list[str]:
    body = envelope(
        Kind.LIBRARY_RESPONSE, gateway="gw", session="s", seq=0, ts=NOW, data=answer.to_json()
    )
    return [e.message for e in Draft202012Validator(SCHEMA).iter_errors(json.loads(encode(body)))]


def test_an_accepted_push_answers_ok_with_the_running_library() -> None:
    answer = PushAnswer("r-1", LIBRARY)
    assert answer.to_json() == {"id": "r-1", "status": "ok", "library": LIBRARY.to_dict()}
    assert problems(answer) == []


@pytest.mark.parametrize("request_id", ["r-1", None])
def test_a_refused_push_answers_its_code_message_and_every_reason(request_id: str | None) -> None:
    refusal = PushRefusal("refused", "library push r-1 refused", ("LIB_A: x", "LIB_B: y"))
    data = PushAnswer(request_id, LIBRARY, refusal).to_json()
    assert data["status"] == "error"
    assert data["id"] == request_id
    assert data["error"] == {
        "code": "refused",
        "message": "library push r-1 refused",
        "reasons": ["LIB_A: x", "LIB_B: y"],
    }
    assert problems(PushAnswer(request_id, LIBRARY, refusal)) == []


@given(st.lists(st.text(min_size=1, max_size=20), max_size=5))
def test_reasons_are_published_in_order(reasons: list[str]) -> None:
    answer = PushAnswer("r", LIBRARY, PushRefusal("bad_request", "m", tuple(reasons)))
    assert answer.to_json()["error"]["reasons"] == reasons
