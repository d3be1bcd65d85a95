"""Every outbound IHE PCD message is valid HL7 v2.6 (hl7apy, strict) and says what the TF asks:
MSH-21 profile, PID-5 present, containment in OBX-4, MDC ids in OBX-3, units in OBX-6."""

from __future__ import annotations

from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from daemon.ihe import messages
from daemon.ihe.messages import Endpoint, Patient
from daemon.ihe.samples import sample_messages
from sim_devices.ehr import summarise
from tests.ihe.conftest import NOW

STATE: dict[str, Any] = {
    "status": "infusing",
    "rate": {"value": 52.5, "unit": "mL/h"},
    "dose": {"value": 0.05, "unit": "ug/kg/min"},
    "drug": "norepinephrine",
    "concentration": {"value": 4.0, "unit": "ug/mL"},
    "vtbi": {"value": 250.0, "unit": "mL"},
    "volume_infused": {"value": 1.25, "unit": "mL"},
    "device": {"driver": "modbus", "model": "SIM-PUMP", "serial": "SN-7", "firmware": "1.0"},
}
EP = Endpoint(receiving_application="EHR")
PT = Patient("bed-1", patient_id="MRN^42")  # a delimiter in an id must be escaped


def validate_v26(payload: bytes) -> None:
    """Strict hl7apy v2.6 validation. ORU^R40 / ORU^R42 share the ORU_R01 structure in the IHE
    PCD TF; hl7apy's v2.6 tables do not define those trigger events, so their structure is
    validated as ORU_R01 (every segment, field and data type of the message is checked)."""
    text = payload.decode("utf-8").rstrip("\r")
    for event in ("ORU^R40^ORU_R40", "ORU^R42^ORU_R01"):
        text = text.replace(event, "ORU^R01^ORU_R01", 1)
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate()
    assert message.msh.msh_12.value == "2.6"


def build_all() -> dict[str, bytes]:
    return {
        "dec_pump": messages.dec_pump(STATE, control_id="c-1", now=NOW, endpoint=EP, patient=PT),
        "dec_vitals": messages.dec_vitals(
            {
                "map": {"value": 72, "unit": "mm[Hg]", "at": "2026-12-06T01:29:59.000Z"},
                "sbp": {"value": 110, "unit": "mm[Hg]", "at": "2026-12-06T01:29:59.000Z"},
                "hr": {
                    "value": 88,
                    "unit": "/min",
                    "at": "2026-12-06T01:29:59.000Z",
                    "stale": True,
                },
                "spo2": None,
            },
            control_id="c-2",
            now=NOW,
            endpoint=EP,
            patient=PT,
        ),
        "ipec_rate": messages.ipec(
            {
                "type": "rate_changed",
                "from": {"rate": {"value": 52.5, "unit": "mL/h"}},
                "to": {"rate": {"value": 63.0, "unit": "mL/h"}},
                "source": "device",
            },
            control_id="c-3",
            now=NOW,
            at=NOW,
            endpoint=EP,
            patient=PT,
            device=STATE["device"],
        ),
        "ipec_override": messages.ipec(
            {
                "type": "override_accepted",
                "command_id": "cmd|7",
                "clinician": "dr-lee",
                "reason": "MAP 58 ^ rising lactate",
                "findings": [{"rule": "SOFT_MAX", "severity": "confirm"}],
            },
            control_id="c-4",
            now=NOW,
            at=NOW,
            endpoint=EP,
            patient=PT,
        ),
        "ipec_paused": messages.ipec(
            {"type": "delivery_stopped", "status": "paused"},
            control_id="c-5",
            now=NOW,
            at=NOW,
            endpoint=EP,
            patient=PT,
        ),
        "acm": messages.acm(
            {
                "type": "alarm_raised",
                "alarm": {"code": "occlusion", "priority": "high", "since": "2026-12-06T01:29Z"},
            },
            pump_id="pump-1",
            alarm_id="pump-1:occlusion:17",
            control_id="c-6",
            now=NOW,
            at=NOW,
            endpoint=EP,
            patient=PT,
        ),
    }


@pytest.mark.parametrize("name", sorted(build_all()))
def test_every_outbound_message_validates_as_hl7_v26(name: str) -> None:
    """Strict structure and data types, including escaped free text and ids."""
    validate_v26(build_all()[name])


def test_profiles_and_identity_fields_follow_the_tf() -> None:
    """MSH-9 and the MSH-21 OID per transaction as the TF assigns them (PCD-01 1.6.1.1.1, PCD-04
    1.6.1.4.1 in TF vol. 2 "MSH-21"; PCD-10 ORU^R42^ORU_R01 and 1.6.4.10 in IPEC X.1.1); PID-3
    the (escaped) patient id; PID-5 ^^^^^^U."""
    built = build_all()
    expected = {
        "dec_pump": ("ORU^R01^ORU_R01", "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"),
        "ipec_rate": ("ORU^R42^ORU_R01", "IHE_PCD_010^IHE PCD^1.3.6.1.4.1.19376.1.6.4.10^ISO"),
        "acm": ("ORU^R40^ORU_R40", "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO"),
    }
    for name, (mtype, profile) in expected.items():
        segments = built[name].decode().split("\r")
        msh = segments[0].split("|")
        assert (msh[8], msh[20]) == (mtype, profile)
        segments = built[name].decode().split("\r")
        pid = next(s for s in segments if s.startswith("PID|"))
        assert pid == "PID|||MRN\\S\\42^^^INFUSIOND^PI||^^^^^^U"


def test_dec_pump_carries_each_metric_with_containment_units_and_device_identity() -> None:
    """Channel metrics are 1.1.1.k under MDS 1.0.0.0 / VMD 1.1.0.0 / channel 1.1.1.0 (TF vol. 2
    B.8 dotted notation); rate and volumes use MDC dimension codes, other units UCUM; OBX-18
    names serial and model."""
    received = summarise(build_all()["dec_pump"])
    by_id = {o.ident: o for o in received.observations}
    assert by_id["MDC_DEV_PUMP_INFUS_MDS"].sub_id == "1.0.0.0"
    assert by_id["MDC_DEV_PUMP_INFUS_VMD"].sub_id == "1.1.0.0"
    assert by_id["MDC_DEV_PUMP_INFUS_CHAN_DELIVERY"].sub_id == "1.1.1.0"
    assert (by_id["MDC_FLOW_FLUID_PUMP"].value, by_id["MDC_FLOW_FLUID_PUMP"].unit) == (
        "52.5",
        "MDC_DIM_MILLI_L_PER_HR",
    )
    assert by_id["MDC_RATE_DOSE"].unit == "ug/kg/min"
    assert by_id["MDC_VOL_FLUID_TBI"].value == "250"
    assert by_id["MDC_VOL_FLUID_DELIV"].value == "1.25"
    assert by_id["MDC_DRUG_NAME_TYPE"].value == "norepinephrine"
    assert by_id["MDC_PUMP_STAT"].value == "infusing"
    metrics = [o.sub_id for o in received.observations if not o.sub_id.endswith(".0")]
    assert metrics == [f"1.1.1.{k}" for k in range(1, len(metrics) + 1)]
    mds = next(s for s in build_all()["dec_pump"].decode().split("\r") if "_MDS^MDC|1.0.0.0|" in s)
    assert mds.endswith("|SN-7^SIM-PUMP")


def test_dec_vitals_leaves_out_stale_and_missing_values() -> None:
    """A stale or absent reading is not charted as current."""
    received = summarise(build_all()["dec_vitals"])
    idents = [o.ident for o in received.observations if o.value]
    assert idents == ["MDC_PRESS_BLD_ART_ABP_MEAN", "MDC_PRESS_BLD_ART_ABP_SYS"]


def test_override_ipec_carries_who_why_and_the_rules() -> None:
    """OBX-16 the clinician; the reason and the overridden rule ids, escaped."""
    payload = build_all()["ipec_override"]
    received = summarise(payload)
    assert received.value("reason") == "MAP 58 \\S\\ rising lactate"
    assert received.value("rules") == "SOFT_MAX"
    assert received.value("command_id") == "cmd\\F\\7"
    assert b"|dr-lee" in payload


def test_dec_pump_sends_the_published_mdc_codes() -> None:
    """The numeric codes are those of TF vol. 3 table 7.1 and the IPEC example (MDC_PUMP_STAT
    is 184508, not MDC_PUMP_MODE's 184504)."""
    segments = build_all()["dec_pump"].decode().split("\r")
    rows = [s.split("|") for s in segments]
    codes = {f[3].split("^")[1]: f[3].split("^")[0] for f in rows if f[0] == "OBX"}
    assert codes == {
        "MDC_DEV_PUMP_INFUS_MDS": "69985",
        "MDC_DEV_PUMP_INFUS_VMD": "69986",
        "MDC_DEV_PUMP_INFUS_CHAN_DELIVERY": "126978",
        "MDC_PUMP_STAT": "184508",
        "MDC_FLOW_FLUID_PUMP": "157784",
        "MDC_DRUG_NAME_TYPE": "184330",
        "MDC_CONC_DRUG": "157760",
        "MDC_RATE_DOSE": "157924",
        "MDC_VOL_FLUID_TBI": "157884",
        "MDC_VOL_FLUID_DELIV": "157864",
    }


def test_dec_vitals_metrics_sit_under_the_vmd_without_a_channel() -> None:
    """Monitor MDS 69965 / VMD 69966; with no channel OBX the metrics are 1.1.0.k (TF vol. 2 B.8:
    a VMD without channels has channel number 0)."""
    segments = [s.split("|") for s in build_all()["dec_vitals"].decode().split("\r")]
    obx = [(f[3].split("^")[0], f[4]) for f in segments if f[0] == "OBX"]
    assert obx[:2] == [("69965", "1.0.0.0"), ("69966", "1.1.0.0")]
    assert all(sub.startswith("1.1.0.") and sub != "1.1.0.0" for _, sub in obx[2:])


def test_ipec_names_the_event_in_an_mds_level_event_condition() -> None:
    """IPEC X.1.2.2: MDC_ATTR_EVT_COND at 1.0.0.1 carries the event, right after the MDS; the
    TF's own events are MDC (start 197288), the gateway's others are local codes, never MDC."""
    for name, event in (
        ("ipec_rate", "rate_changed^Rate changed^99INFUSIOND"),
        ("ipec_paused", "MDC_EVT_PUMP_DELIV_STOP^MDC_EVT_PUMP_DELIV_STOP^MDC"),
    ):
        segments = [s.split("|") for s in build_all()[name].decode().split("\r")]
        obx = [f for f in segments if f[0] == "OBX"]
        assert obx[0][4] == "1.0.0.0"
        assert (obx[1][2], obx[1][3], obx[1][4], obx[1][5]) == (
            "CWE",
            "MDC_ATTR_EVT_COND^MDC_ATTR_EVT_COND^MDC",
            "1.0.0.1",
            event,
        )
    assert messages.terms().events["delivery_started"].cwe() == (
        "197288^MDC_EVT_PUMP_DELIV_START^MDC"
    )


def test_a_pause_is_a_delivery_stop_told_apart_by_the_gateway_event() -> None:
    """IPEC has no pause event: a pause is MDC_EVT_PUMP_DELIV_STOP, and the local "event"
    observation says delivery_paused."""
    received = summarise(build_all()["ipec_paused"])
    assert received.subject == "MDC_EVT_PUMP_DELIV_STOP"
    assert received.value("event") == "delivery_paused"


def test_acm_sends_the_seven_alert_facets_of_a_technical_alarm() -> None:
    """TF vol. 2 table B.8.5-1: event identification (MDC_EVT_ALARM, the alarm in OBX-5, the
    pump in OBX-18), source (the pump's MDS), phase, state, inactivation state, priority and
    type as separate OBX (not OBX-8), sub-ids 1.0.0.0.1..7; a pump alarm is technical (ST)."""
    segments = [s.split("|") for s in build_all()["acm"].decode().split("\r")]
    obx = [f for f in segments if f[0] == "OBX"]
    assert [(f[3].split("^")[0], f[4], f[5]) for f in obx] == [
        ("196616", "1.0.0.0.1", "occlusion^occlusion^99INFUSIOND"),
        ("68480", "1.0.0.0.2", "69985^MDC_DEV_PUMP_INFUS_MDS^MDC"),
        ("68481", "1.0.0.0.3", "start"),
        ("68482", "1.0.0.0.4", "active"),
        ("68483", "1.0.0.0.5", ""),  # unknown to the gateway: not claimed "enabled"
        ("68484", "1.0.0.0.6", "PH"),
        ("68485", "1.0.0.0.7", "ST"),
    ]
    assert obx[0][18] == "pump-1"
    assert all(len(f) <= 8 or not f[8] for f in obx)


def test_piv_order_and_answer_carry_their_own_profile_oids() -> None:
    """TF vol. 2 "MSH-21": PCD-03 RGV^O15 is 1.6.1.3.1, its RRG^O16 answer 1.6.1.3.2."""
    samples = sample_messages()
    oids = {
        name: samples[name].decode().split("\r")[0].split("|")[20].split("^")[2]
        for name in ("piv-order", "piv-answer-aa", "piv-answer-ar")
    }
    assert oids == {
        "piv-order": "1.3.6.1.4.1.19376.1.6.1.3.1",
        "piv-answer-aa": "1.3.6.1.4.1.19376.1.6.1.3.2",
        "piv-answer-ar": "1.3.6.1.4.1.19376.1.6.1.3.2",
    }
