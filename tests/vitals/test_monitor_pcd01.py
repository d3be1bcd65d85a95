"""The monitor simulator's ORU^R01 is a proper IHE PCD-01 (DEC) message: strict HL7 v2.6."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from drivers.hl7 import Parameter, build_oru, parse_oru

NOW = datetime(2026, 12, 6, 1, 30, tzinfo=UTC)
VALUES = {
    Parameter.MAP: (Decimal(74), NOW),
    Parameter.SBP: (Decimal(110), NOW),
    Parameter.HR: (Decimal(90), NOW),
}


@pytest.mark.parametrize("coding", ["MDC", "LN"])
@pytest.mark.parametrize("patient_id", [None, "MRN-7"])
def test_monitor_oru_validates_strictly_as_v26_pcd01(coding: str, patient_id: str | None) -> None:
    """PID-5 present (^^^^^^U), MSH-21 IHE_PCD_001, OBX-4 containment 1.1.1.k."""
    payload = build_oru(
        control_id="m-1",
        sent_at=NOW,
        values=VALUES,
        bed="bed-1",
        patient_id=patient_id,
        coding=coding,
    )
    text = payload.decode().rstrip("\r")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate()
    assert message.msh.msh_21.value.startswith("IHE_PCD_001^")
    segments = text.split("\r")
    pid = next(s for s in segments if s.startswith("PID|")).split("|")
    assert pid[5] == "^^^^^^U"
    assert pid[3] == (patient_id or "bed-1")
    obx4 = [s.split("|")[4] for s in segments if s.startswith("OBX|")]
    assert obx4 == ["1.1.1.1", "1.1.1.2", "1.1.1.3"]


def test_gateway_reads_the_stricter_message_as_before() -> None:
    """The listener's parser maps the PCD-01 message to the same sample."""
    sample = parse_oru(
        build_oru(control_id="m-2", sent_at=NOW, values=VALUES, bed="bed-1"), now=NOW
    )
    assert sample.observations[Parameter.MAP].value == Decimal(74)
    assert sample.bed == "bed-1"
