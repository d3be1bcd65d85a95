"""The sample messages of docs/ehr-integration.md, built by the real builders with a fixed clock
and fixed ids (tests/ihe/test_docs.py checks that the page shows exactly these bytes).

``python -m daemon.ihe.samples`` prints them as the page's fenced blocks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict

from daemon.ihe import messages
from daemon.ihe.messages import Endpoint, Patient
from drivers.hl7.ack import AckCode
from drivers.hl7.piv import build_rgv, build_rrg

AT = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
ENDPOINT = Endpoint(sending_facility="icu-gw-1", receiving_application="EHR")
PATIENT = Patient("bed-1", patient_id="MRN-0042")
DEVICE = {"driver": "modbus", "model": "SIM-PUMP", "serial": "SN-1001", "firmware": "1.0"}


class _Common(TypedDict):
    now: datetime
    endpoint: Endpoint
    patient: Patient


def sample_messages() -> dict[str, bytes]:
    """Name -> message bytes (segments separated by CR)."""
    state = {
        "status": "infusing",
        "rate": {"value": 63.0, "unit": "mL/h"},
        "dose": {"value": 0.06, "unit": "ug/kg/min"},
        "drug": "norepinephrine",
        "concentration": {"value": 4.0, "unit": "ug/mL"},
        "vtbi": None,
        "volume_infused": {"value": 12.4, "unit": "mL"},
        "device": DEVICE,
    }
    common: _Common = {"now": AT, "endpoint": ENDPOINT, "patient": PATIENT}
    return {
        "dec-pump": messages.dec_pump(state, control_id="3f9a-101", **common),
        "dec-vitals": messages.dec_vitals(
            {
                "map": {"value": 71, "unit": "mm[Hg]", "at": "2026-12-06T08:29:58.000Z"},
                "hr": {"value": 92, "unit": "/min", "at": "2026-12-06T08:29:58.000Z"},
                "spo2": {"value": 96, "unit": "%", "at": "2026-12-06T08:29:58.000Z"},
            },
            control_id="3f9a-102",
            **common,
        ),
        "ipec-rate-changed": messages.ipec(
            {
                "type": "rate_changed",
                "from": {"rate": {"value": 52.5, "unit": "mL/h"}},
                "to": {"rate": {"value": 63.0, "unit": "mL/h"}},
                "command_id": "titrate-17",
                "source": "command",
            },
            control_id="3f9a-103",
            at=AT,
            device=DEVICE,
            **common,
        ),
        "ipec-override": messages.ipec(
            {
                "type": "override_accepted",
                "command_id": "titrate-18",
                "clinician": "dr-2",
                "reason": "MAP 58, lactate rising",
                "findings": [{"rule": "SOFT_MAX", "severity": "confirm"}],
            },
            control_id="3f9a-104",
            at=AT,
            device=DEVICE,
            **common,
        ),
        "acm-raised": messages.acm(
            {"type": "alarm_raised", "alarm": {"code": "occlusion", "priority": "high"}},
            pump_id="pump-1",
            alarm_id="pump-1:occlusion:5121",
            control_id="3f9a-105",
            at=AT,
            **common,
        ),
        "acm-cleared": messages.acm(
            {"type": "alarm_cleared", "alarm": {"code": "occlusion", "priority": "high"}},
            pump_id="pump-1",
            alarm_id="pump-1:occlusion:5121",
            control_id="3f9a-106",
            at=AT,
            **common,
        ),
        "piv-order": build_rgv(
            control_id="EHR-77",
            now=AT,
            order_id="ORD-77",
            pump_id="pump-1",
            drug="norepinephrine",
            concentration=("4", "ug/mL"),
            dose=("0.07", "ug/kg/min"),
            ordered_by="dr-2",
            diluent="D5W",
            patient_id="MRN-0042",
            bed="bed-1",
        ),
        "piv-answer-aa": build_rrg(
            answers="EHR-77",
            code=AckCode.AA,
            now=AT,
            control_id="PIV1",
            order_id="ORD-77",
            patient_id="MRN-0042",
            receiving_application="EHR-SIM",
        ),
        "piv-answer-ar": build_rrg(
            answers="EHR-78",
            code=AckCode.AR,
            now=AT,
            control_id="PIV2",
            order_id="ORD-78",
            text="rejected by the drug library: HARD_MAX",
            receiving_application="EHR-SIM",
        ),
    }


def markdown_block(name: str, payload: bytes) -> str:
    """The page's block for one sample: a marker comment, then the segments one per line."""
    body = payload.decode("utf-8").rstrip("\r").replace("\r", "\n")
    return f"<!-- sample: {name} -->\n```hl7\n{body}\n```"


if __name__ == "__main__":
    for sample, data in sample_messages().items():
        print(markdown_block(sample, data) + "\n")  # noqa: T201
