"""The value type the HL7 driver hands to the daemon: one monitor reading of a bed's vitals."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


class Parameter(enum.Enum):
    """The vital signs infusiond tracks; values are the public ``vitals.state`` keys."""

    MAP = "map"
    SBP = "sbp"
    DBP = "dbp"
    HR = "hr"
    SPO2 = "spo2"


#: canonical UCUM unit of each parameter (the only unit a sample carries after mapping)
CANONICAL_UNIT: dict[Parameter, str] = {
    Parameter.MAP: "mm[Hg]",
    Parameter.SBP: "mm[Hg]",
    Parameter.DBP: "mm[Hg]",
    Parameter.HR: "/min",
    Parameter.SPO2: "%",
}


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured value: canonical UCUM unit, observation time (aware, UTC) and its code."""

    value: Decimal
    unit: str
    at: datetime
    code: str = ""  # e.g. "MDC:150039" or "LN:8478-0", for traceability


@dataclass(frozen=True, slots=True)
class VitalsSample:
    """The vitals of one ORU^R01 message.

    ``bed`` comes from PV1-3 (bed component, else point of care), ``patient_id`` from PID-3;
    either may be ``None`` when the sender does not fill it (the daemon then maps the source to
    a configured bed). ``source`` names the sender (``hl7:<MSH-3>``), ``control_id`` is MSH-10.
    ``received_at`` is the gateway's clock when the message arrived: an observation is never
    taken to be newer than that, whatever its stamp says (the monitor's clock is not trusted).
    """

    source: str
    control_id: str
    observations: Mapping[Parameter, Observation] = field(default_factory=dict)
    bed: str | None = None
    patient_id: str | None = None
    sent_at: datetime | None = None  # MSH-7
    received_at: datetime = field(kw_only=True)  # the gateway's clock at receipt
