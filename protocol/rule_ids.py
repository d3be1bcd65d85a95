"""Every rule id (docs/check.md, "Rule ids") with its severity in the shipped library.

Rule ids are a public contract (dashboards and the journal key on them); messages are for
people. A library may override the severity of a rule per drug (``severity = {RULE = "..."}``)
except for the rules in :data:`FIXED`, whose reject can never be lowered: without a known drug,
profile, unit, weight, pump range, diluent or concentration there is no safe rate to send.
The rules in :data:`AT_LEAST_CONFIRM` may be raised to reject but never lowered below confirm:
an input that the gate does not recognise is never accepted without a clinician.
"""

from __future__ import annotations

from typing import Final

from protocol.verdict import Severity

_R = Severity.REJECT
_C = Severity.CONFIRM
_A = Severity.ADVISORY

DEFAULT_SEVERITY: Final[dict[str, Severity]] = {
    "HARD_MAX": _R,
    "HARD_MIN": _R,
    "CONC_ROUTE_MAX": _R,
    "DILUENT_FORBIDDEN": _R,
    "INCOMPATIBLE_LINE": _R,
    "WEIGHT_REQUIRED": _R,
    "WEIGHT_RANGE": _R,
    "PUMP_RANGE": _R,
    "UNIT_MISMATCH": _R,
    "UNKNOWN_DRUG": _R,
    "UNKNOWN_PROFILE": _R,
    "STEP_UP_WINDOW": _R,
    "SOFT_MAX": _C,
    "SOFT_MIN": _C,
    "START_RANGE": _C,
    "CONC_NOT_STANDARD": _C,
    "ABRUPT_STOP": _C,
    "VASOPRESSIN_PREREQ": _C,
    "NOT_FIRST_LINE": _C,
    "RENAL_DOSE_DOPAMINE": _C,
    "MAP_ABOVE_TARGET": _C,
    "MAP_BELOW_TARGET": _C,
    "SBP_CEILING": _C,
    "DUPLICATE_DRUG": _C,
    "LINE_SHARE_UNKNOWN": _C,
    "TITRATION_INTERVAL": _A,
    "ESCALATION_ADVISORY": _A,
    "VITALS_STALE": _A,
    "MAINTENANCE_RANGE": _A,
}

FIXED: Final = frozenset(
    {
        "HARD_MAX",
        "HARD_MIN",
        "CONC_ROUTE_MAX",
        "DILUENT_FORBIDDEN",
        "INCOMPATIBLE_LINE",
        "WEIGHT_REQUIRED",
        "WEIGHT_RANGE",
        "PUMP_RANGE",
        "UNIT_MISMATCH",
        "UNKNOWN_DRUG",
        "UNKNOWN_PROFILE",
    }
)

AT_LEAST_CONFIRM: Final = frozenset({"LINE_SHARE_UNKNOWN"})
