"""docs/check.md: every request it shows passes `infusiond check`, each example's verdict is
the one printed, and the field table names only fields the request model has (and all of them)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from pydantic import BaseModel

from daemon.cli import main
from protocol.request import CheckRequest
from tests.docs.docs_text import DOCS, blocks

PAGE = DOCS / "check.md"


def request_blocks() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in blocks(PAGE):
        if block.lang == "json":
            data = json.loads(block.text)
            if "requested" in data:
                out.append((block.where, data))
    return out


def example_pairs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, request, verdict) for the request/verdict pairs of the Examples section."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.count("\n", 0, text.index("## Examples")) + 1
    end = text.count("\n", 0, text.index("## Rule ids")) + 1
    shown = [b for b in blocks(PAGE) if b.lang == "json" and start < b.line < end]
    assert len(shown) % 2 == 0
    return [
        (shown[i].where, json.loads(shown[i].text), json.loads(shown[i + 1].text))
        for i in range(0, len(shown), 2)
    ]


def check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], req: Any) -> Any:
    stdin = io.TextIOWrapper(io.BytesIO(json.dumps(req).encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    code = main(["check"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return json.loads(out)


@pytest.mark.parametrize(("where", "request_"), request_blocks(), ids=lambda v: str(v)[:40])
def test_every_request_shown_is_accepted_as_input(
    where: str,
    request_: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each request block is a valid request: `infusiond check` answers a verdict, exit 0."""
    verdict = check(monkeypatch, capsys, request_)
    assert verdict["verdict"] in {"accept", "confirm", "reject"}, where


def test_the_page_has_examples_of_every_verdict() -> None:
    """The examples show an accept, a confirm and a reject."""
    assert {v["verdict"] for _, _, v in example_pairs()} == {"accept", "confirm", "reject"}


def _comparable(verdict: dict[str, Any]) -> dict[str, Any]:
    """The verdict without the parts for people (messages) or of the file (sha256)."""
    findings = [{k: v for k, v in f.items() if k != "message"} for f in verdict["findings"]]
    library = {k: v for k, v in verdict["library"].items() if k != "sha256"}
    return {**verdict, "findings": findings, "library": library}


@pytest.mark.parametrize(("where", "request_", "shown"), example_pairs(), ids=lambda v: str(v)[:40])
def test_each_example_verdict_is_what_check_prints(
    where: str,
    request_: dict[str, Any],
    shown: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verdict, rate, dose, every finding's rule, severity, limit and observed value, and the
    library name and version are exactly as the page shows them."""
    assert _comparable(check(monkeypatch, capsys, request_)) == _comparable(shown), where


def _paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field path of the model: objects recurse, lists of objects get ``[]``."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        stack: list[Any] = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                is_list = "tuple" in str(info.annotation)
                out |= _paths(ann, f"{path}[]." if is_list else f"{path}.")
                break
            stack.extend(getattr(ann, "__args__", ()))
    return out


def test_the_field_table_matches_the_request_model() -> None:
    """Every row of "Every field" is a real field path, and every top-level field and every
    field of patient, infusion, requested and pump has a row."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("### Every field") : text.index("### Units and")]
    rows = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    known = _paths(CheckRequest)
    assert rows <= known
    covered = {row.split(".")[0].removesuffix("[]") for row in rows}
    assert covered == set(CheckRequest.model_fields)
    for section_name in ("patient", "infusion", "requested", "pump"):
        fields = {p for p in known if p.startswith(f"{section_name}.") and p.count(".") == 1}
        assert {r.rsplit(".", 1)[0] if r.count(".") > 1 else r for r in rows} >= fields
