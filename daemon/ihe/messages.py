"""IHE PCD messages to the EHR: DEC (PCD-01), IPEC (PCD-10) and ACM (PCD-04), HL7 v2.6.

Pure functions from the gateway's public data (``pump.state`` / ``vitals.state`` dicts and
``pump.event`` dicts, exactly as published on MQTT) to message bytes; the control id and the
time are arguments, so the journal can build a message inside the transaction that stores it.

Segments are written here, field by field through :func:`drivers.hl7.text.escape`, rather than
with hl7apy's element tree: building a tree per message costs milliseconds (a titration's
added latency is budgeted at 20 %), and its encoder does not escape free text put into a
component. hl7apy validates every message type in the tests (tests/ihe/test_messages.py):
strict HL7 v2.6 structure and data types; ORU^R40 and ORU^R42 are checked against the
ORU_R01 structure they share (the v2.6 tables of hl7apy do not define the IHE trigger events).

Layouts (IHE PCD TF Rev. 8.0 vol. 2; IPEC supplement Rev. 1.5): MSH-21 names the IHE profile
with the OID of TF vol. 2 "MSH-21 Message Profile Identifier" (IPEC: its section X.1.1); PID-3
the patient (the bed id when no patient id is configured) and PID-5 ``^^^^^^U`` when the name
is unknown; PV1-3 the bed; OBR-4 the device (DEC) or the event (IPEC, ACM); one OBX per device
level in the dotted notation of vol. 2 appendix B.8 OBX-4 (MDS ``1.0.0.0``, VMD ``1.1.0.0``,
channel ``1.1.1.0``), the MDS carrying the serial and model in OBX-18, then one OBX per metric
(``1.1.1.k``; ``1.1.0.k`` under a VMD without a channel), OBX-11 ``R`` (DEC) or ``F`` (events).
IPEC names its event in an MDS-level ``MDC_ATTR_EVT_COND`` OBX (IPEC X.1.2.2); ACM sends the
seven alert facets of vol. 2 table B.8.5-1 as ``1.0.0.0.n`` (priority and type as their own
OBX, not in OBX-8: the OBX-8 form is deprecated there).
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from daemon.base.timefmt import parse_ts
from drivers.hl7.codes import code_tables
from drivers.hl7.dtm import format_dtm
from drivers.hl7.sample import Parameter
from drivers.hl7.text import escape

#: a local coding system (HL7: names starting with 99 are site-defined) for the fields that
#: MDC has no term for: command ids, the gateway's alarm codes
LOCAL = "99INFUSIOND"


class Profile(enum.Enum):
    """The three outbound transactions: message type (MSH-9) and IHE profile id (MSH-21)."""

    DEC = ("ORU^R01^ORU_R01", "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO")
    IPEC = ("ORU^R42^ORU_R01", "IHE_PCD_010^IHE PCD^1.3.6.1.4.1.19376.1.6.4.10^ISO")
    ACM = ("ORU^R40^ORU_R40", "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO")

    @property
    def message_type(self) -> str:
        """MSH-9."""
        return self.value[0]

    @property
    def profile_id(self) -> str:
        """MSH-21 (EI: entity id ^ namespace ^ OID ^ ISO)."""
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Term:
    """One term: numeric code (``""`` when not published), reference id, coding system (MDC, or
    :data:`LOCAL` for the gateway's own events, with its text as ``ref``)."""

    code: str
    ref: str
    system: str = "MDC"

    def cwe(self) -> str:
        """OBX-3 / OBR-4 / OBX-5 / OBX-6 CWE: ``code^REF_ID^MDC`` (the reference id twice when
        the numeric code is not published)."""
        return f"{self.code or self.ref}^{self.ref}^{self.system}"


@dataclass(frozen=True, slots=True)
class Terms:
    """The table of ``mdc.toml``."""

    devices: Mapping[str, Term]
    pump: Mapping[str, Term]
    units: Mapping[str, Term]
    events: Mapping[str, Term]
    alarm: Mapping[str, Term]


@cache
def terms() -> Terms:
    """The shipped MDC table (parsed on first use)."""
    raw = tomllib.loads(
        resources.files("daemon.ihe").joinpath("mdc.toml").read_text(encoding="utf-8")
    )

    def table(name: str) -> dict[str, Term]:
        return {
            k: Term(str(v["code"]), str(v["ref"]), str(v.get("system", "MDC")))
            for k, v in raw[name].items()
        }

    return Terms(table("devices"), table("pump"), table("units"), table("events"), table("alarm"))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Who sends and who receives (MSH-3..6)."""

    sending_application: str = "INFUSIOND"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


@dataclass(frozen=True, slots=True)
class Patient:
    """PID/PV1 content for one bed: the configured patient id, else the bed id."""

    bed: str
    patient_id: str | None = None


def _seg(name: str, *fields: str) -> str:
    """One segment from already-encoded fields (trailing empty fields dropped)."""
    items = list(fields)
    while items and not items[-1]:
        items.pop()
    return "|".join([name, *items])


def _header(profile: Profile, endpoint: Endpoint, control_id: str, now: datetime) -> list[str]:
    msh = (
        "MSH|^~\\&|"
        + "|".join(
            escape(x)
            for x in (
                endpoint.sending_application,
                endpoint.sending_facility,
                endpoint.receiving_application,
                endpoint.receiving_facility,
            )
        )
        + f"|{format_dtm(now)}||{profile.message_type}|{escape(control_id)}|P|2.6|||AL|NE"
        + f"||UNICODE UTF-8|||{profile.profile_id}"
    )
    return [msh]


def _patient(patient: Patient) -> list[str]:
    ident = escape(patient.patient_id or patient.bed)
    return [
        _seg("PID", "", "", f"{ident}^^^INFUSIOND^PI", "", "^^^^^^U"),
        _seg("PV1", "", "I", f"^^{escape(patient.bed)}"),
    ]


def _obx(
    n: int,
    value_type: str,
    ident: str,
    sub_id: str,
    value: str = "",
    *,
    unit: str = "",
    status: str = "R",
    at: datetime | None = None,
    observer: str = "",
    equipment: str = "",
    flags: str = "",
) -> str:
    return _seg(
        "OBX",
        str(n),
        value_type,
        ident,
        sub_id,
        value,
        unit,
        "",
        flags,
        "",
        "",
        status,
        "",
        "",
        format_dtm(at) if at else "",
        "",
        observer,
        "",
        equipment,
    )


def _number(value: Any) -> str:
    """An NM value: JSON numbers only (a string or bool is a bug upstream, not data)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    text = f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return text or "0"


def _unit(unit: str) -> str:
    term = terms().units.get(unit)
    if term is not None:
        return term.cwe()
    return f"{escape(unit)}^{escape(unit)}^UCUM"


def _equipment(device: Mapping[str, Any] | None) -> str:
    """OBX-18 EI: serial (entity id) ^ model (namespace), as far as the device told us."""
    if not device:
        return ""
    serial = device.get("serial") or ""
    model = device.get("model") or device.get("driver") or ""
    return f"{escape(str(serial))}^{escape(str(model))}" if serial or model else ""


def _pump_device(
    n: int, state: Mapping[str, Any], at: datetime, mds_metrics: Sequence[tuple[str, str, str]] = ()
) -> tuple[list[str], int]:
    """OBX for the pump's MDS (``1.0.0.0``), its own metrics (``1.0.0.k``: value type,
    identifier, value), VMD (``1.1.0.0``) and delivery channel (``1.1.1.0``), in the TF's
    dictionary order."""
    devices = terms().devices
    equipment = _equipment(state.get("device"))
    rows = [
        _obx(n, "", devices["pump_mds"].cwe(), "1.0.0.0", status="X", at=at, equipment=equipment)
    ]
    for k, (value_type, ident, value) in enumerate(mds_metrics, start=1):
        rows.append(_obx(n + k, value_type, ident, f"1.0.0.{k}", value, status="F", at=at))
    n += len(rows)
    rows.append(_obx(n, "", devices["pump_vmd"].cwe(), "1.1.0.0", status="X", at=at))
    rows.append(_obx(n + 1, "", devices["pump_channel"].cwe(), "1.1.1.0", status="X", at=at))
    return rows, n + 2


def _obr(n: int, control_id: str, universal: str, at: datetime, filler: str = "") -> str:
    placer = f"{escape(control_id)}^INFUSIOND"
    return _seg("OBR", str(n), placer, filler or placer, universal, "", "", format_dtm(at))


def dec_pump(
    state: Mapping[str, Any],
    *,
    control_id: str,
    now: datetime,
    endpoint: Endpoint,
    patient: Patient,
) -> bytes:
    """DEC (PCD-01) for one pump from its ``pump.state`` data."""
    metric = terms().pump
    lines = _header(Profile.DEC, endpoint, control_id, now) + _patient(patient)
    lines.append(_obr(1, control_id, terms().devices["pump_vmd"].cwe(), now))
    rows, n = _pump_device(1, state, now)
    lines += rows
    k = 0

    def add(value_type: str, term: Term, value: str, unit: str = "") -> None:
        nonlocal n, k
        k += 1
        lines.append(_obx(n, value_type, term.cwe(), f"1.1.1.{k}", value, unit=unit, at=now))
        n += 1

    if state.get("status"):
        add("ST", metric["status"], escape(str(state["status"])))
    for key in ("rate",):
        obj = state.get(key)
        if obj:
            add("NM", metric[key], _number(obj["value"]), _unit(str(obj["unit"])))
    if state.get("drug"):
        add("ST", metric["drug"], escape(str(state["drug"])))
    for key in ("concentration", "dose", "vtbi", "volume_infused"):
        obj = state.get(key)
        if obj:
            add("NM", metric[key], _number(obj["value"]), _unit(str(obj["unit"])))
    return _encode(lines)


#: vitals.state keys in DEC order
_VITALS = (Parameter.MAP, Parameter.SBP, Parameter.DBP, Parameter.HR, Parameter.SPO2)


def dec_vitals(
    snapshot: Mapping[str, Any],
    *,
    control_id: str,
    now: datetime,
    endpoint: Endpoint,
    patient: Patient,
) -> bytes:
    """DEC (PCD-01) for one bed from its ``vitals.state`` data (present, non-stale values)."""
    devices = terms().devices
    tables = code_tables()
    lines = _header(Profile.DEC, endpoint, control_id, now) + _patient(patient)
    lines.append(_obr(1, control_id, devices["monitor_mds"].cwe(), now))
    lines.append(_obx(1, "", devices["monitor_mds"].cwe(), "1.0.0.0", status="X", at=now))
    lines.append(_obx(2, "", devices["monitor_vmd"].cwe(), "1.1.0.0", status="X", at=now))
    n = 3
    for k, parameter in enumerate(_VITALS, start=1):
        obs = snapshot.get(parameter.value)
        if not obs or obs.get("stale"):
            continue
        entry = tables.code_for(parameter, "MDC")
        unit = tables.unit_for(parameter)
        lines.append(
            _obx(
                n,
                "NM",
                f"{entry.code}^{entry.name}^MDC",
                f"1.1.0.{k}",  # no channel level: TF vol. 2 B.8 OBX-4 ("1.2.0.1")
                _number(obs["value"]),
                unit=f"{unit.mdc}^{unit.mdc_name}^MDC",
                at=parse_ts(str(obs["at"])),
            )
        )
        n += 1
    return _encode(lines)


#: pump.event types that are IPEC events (delivery_stopped with status paused is "paused")
IPEC_EVENTS = frozenset(
    {"delivery_started", "delivery_stopped", "rate_changed", "program_changed", "override_accepted"}
)
ACM_EVENTS = frozenset({"alarm_raised", "alarm_cleared"})


def ipec_kind(event: Mapping[str, Any]) -> str:
    """The IPEC event name of a ``pump.event`` (``delivery_paused`` for a pause)."""
    kind = str(event["type"])
    if kind == "delivery_stopped" and event.get("status") == "paused":
        return "delivery_paused"
    return kind


def ipec(
    event: Mapping[str, Any],
    *,
    control_id: str,
    now: datetime,
    at: datetime,
    endpoint: Endpoint,
    patient: Patient,
    device: Mapping[str, Any] | None = None,
) -> bytes:
    """IPEC (PCD-10) for one infusion event: what changed, from/to, by whom, which command."""
    kind = ipec_kind(event)
    term = terms().events[kind]
    metric = terms().pump
    lines = _header(Profile.IPEC, endpoint, control_id, now) + _patient(patient)
    lines.append(_obr(1, control_id, term.cwe(), at))
    condition = ("CWE", terms().events["condition"].cwe(), term.cwe())
    rows, n = _pump_device(1, {"device": device}, at, (condition,))
    lines += rows
    by = event.get("clinician") or ""
    observer = escape(str(by)) if by else ""
    # the gateway's own name of the event: a pause and a stop are both MDC_EVT_PUMP_DELIV_STOP
    lines.append(
        _obx(n, "ST", f"event^Gateway event^{LOCAL}", "1.1.1.1", escape(kind), status="F", at=at)
    )
    n += 1
    k = 1

    def add(value_type: str, ident: str, value: str, unit: str = "") -> None:
        nonlocal n, k
        k += 1
        lines.append(
            _obx(
                n,
                value_type,
                ident,
                f"1.1.1.{k}",
                value,
                unit=unit,
                status="F",
                at=at,
                observer=observer,
            )
        )
        n += 1

    rate_ident = metric["rate"].cwe()
    if kind == "rate_changed":
        idents = {"from": f"rate_from^Rate before the change^{LOCAL}", "to": rate_ident}
        for edge, ident in idents.items():
            rate = (event.get(edge) or {}).get("rate")
            if rate:
                add("NM", ident, _number(rate["value"]), _unit(str(rate["unit"])))
    elif kind == "delivery_started" and event.get("rate"):
        rate = event["rate"]
        add("NM", rate_ident, _number(rate["value"]), _unit(str(rate["unit"])))
    program = event.get("program")
    if isinstance(program, Mapping):
        if program.get("drug"):
            add("ST", metric["drug"].cwe(), escape(str(program["drug"])))
        conc = program.get("concentration")
        if isinstance(conc, Mapping):
            add(
                "NM",
                metric["concentration"].cwe(),
                _number(conc["value"]),
                _unit(str(conc["unit"])),
            )
    source = event.get("command_id") or event.get("source") or "device"
    add("ST", f"command_id^Command id or device^{LOCAL}", escape(str(source)))
    if kind == "override_accepted":
        add("ST", f"reason^Clinician's reason^{LOCAL}", escape(str(event.get("reason") or "")))
        rules = ",".join(str(f.get("rule", "")) for f in event.get("findings") or [])
        if rules:
            add("ST", f"rules^Overridden rule ids^{LOCAL}", escape(rules))
    return _encode(lines)


#: the gateway's alarm priorities -> MDC_ATTR_ALARM_PRIORITY values (TF vol. 2 table B.8.5-8)
_PRIORITY = {"high": "PH", "medium": "PM", "low": "PL"}


def acm(
    event: Mapping[str, Any],
    *,
    pump_id: str,
    alarm_id: str,
    control_id: str,
    now: datetime,
    at: datetime,
    endpoint: Endpoint,
    patient: Patient,
) -> bytes:
    """ACM (PCD-04) for one ``alarm_raised`` / ``alarm_cleared``, a technical alarm of the pump:
    the seven facets of TF vol. 2 table B.8.5-1 (event identification ``MDC_EVT_ALARM`` with the
    alarm in OBX-5 and the pump id in OBX-18, source the pump's MDS, phase, state, inactivation
    state (empty: unknown here), priority, type ``ST``), OBX-4 ``1.0.0.0.n``. OBR-3 carries
    ``alarm_id``, the alarm's identity, the same for its raise and its clear (the caller keeps
    it: see daemon/ihe/outbound.py)."""
    alarm: Mapping[str, Any] = event["alarm"]
    raised = event["type"] == "alarm_raised"
    t = terms().alarm
    identity = escape(alarm_id)
    lines = _header(Profile.ACM, endpoint, control_id, now) + _patient(patient)
    lines.append(_obr(1, control_id, t["event"].cwe(), at, filler=f"{identity}^INFUSIOND"))
    priority = _PRIORITY.get(str(alarm.get("priority")), "PM")
    code = escape(str(alarm.get("code")))
    text = escape(str(alarm.get("message") or alarm.get("code")))
    rows: Sequence[tuple[str, str, str]] = (
        ("CWE", t["event"].cwe(), f"{code}^{text}^{LOCAL}"),
        ("CWE", t["source"].cwe(), terms().devices["pump_mds"].cwe()),
        ("ST", t["phase"].cwe(), "start" if raised else "end"),
        ("ST", t["state"].cwe(), "active" if raised else "inactive"),
        # left empty (TF vol. 2 B.8.5 "Inactivation state facet": "This may be empty"): the
        # gateway does not know whether the pump's audio is paused, so it does not claim it
        ("ST", t["inactivation"].cwe(), ""),
        ("ST", t["priority"].cwe(), priority),
        ("ST", t["type"].cwe(), "ST"),  # technical alarm (table B.8.5-9)
    )
    for n, (value_type, ident, value) in enumerate(rows, start=1):
        lines.append(
            _obx(
                n,
                value_type,
                ident,
                f"1.0.0.0.{n}",
                value,
                status="F",
                at=at,
                equipment=escape(pump_id) if n == 1 else "",
            )
        )
    return _encode(lines)


def _encode(lines: list[str]) -> bytes:
    return ("\r".join(lines) + "\r").encode("utf-8")
