"""docs/ehr-integration.md shows exactly the messages the code builds, and each outbound one
is valid HL7 v2.6."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.ihe.samples import markdown_block, sample_messages
from tests.ihe.test_messages import validate_v26

PAGE = Path(__file__).resolve().parents[2] / "docs" / "ehr-integration.md"
OUTBOUND = ("dec-pump", "dec-vitals", "ipec-rate-changed", "ipec-override", "acm-raised")


def test_every_sample_on_the_page_is_what_the_code_builds() -> None:
    text = PAGE.read_text(encoding="utf-8")
    samples = sample_messages()
    assert re.findall(r"<!-- sample: ([a-z0-9-]+) -->", text) == list(samples)
    for name, payload in samples.items():
        assert markdown_block(name, payload) in text, f"sample {name} is out of date"


@pytest.mark.parametrize("name", [*OUTBOUND, "acm-cleared", "piv-answer-aa", "piv-answer-ar"])
def test_outbound_samples_validate(name: str) -> None:
    validate_v26(sample_messages()[name])
