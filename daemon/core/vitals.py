"""Daemon-side vitals: the latest value of each parameter per bed, its age and staleness.

Pure: no clock reads, no I/O. The caller passes ``now`` (aware datetime) and feeds every
:class:`drivers.hl7.VitalsSample` the listener accepts.

The monitor's clock is not trusted further than the gateway's: a reading is held with the
time ``min(its stamp, the gateway's receipt)``. That time orders readings, dates the published
``at`` and the rule engine's ``at``, and decides staleness; so a reading stamped ahead (the
listener refuses more than 60 s ahead, see ``ReceiverConfig.max_future_s``) neither pins the
state against the monitor's later readings nor stays "fresh" longer than it has been held, and
a late or replayed one (stamped before what is held) never replaces a fresher value.

Two outputs:

- :meth:`VitalsState.snapshot` -> the ``data`` of ``vitals/<bed_id>/state``:
  ``{"map"|"sbp"|"dbp"|"hr"|"spo2": {"value", "unit", "at"} | null, "source"}``, each value
  carrying ``"stale": true`` once older than ``stale_after_s`` (default 900 s = 15 min);
- :meth:`VitalsState.check_vitals` -> the ``vitals`` of a check request (docs/check.md):
  ``{"map", "sbp", "dbp", "hr"}`` each ``{"value", "unit", "at"}``, or None without any.

Publication cadence (on every new reading and at least every 5 s) belongs to the MQTT bridge;
:meth:`VitalsState.update` returns whether the reading was new, to trigger it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from daemon.base.payload import JsonObject
from drivers.hl7 import Observation, Parameter, VitalsSample

DEFAULT_STALE_AFTER_S = 900.0
#: parameters of the public payload, in payload order
STATE_PARAMETERS = (Parameter.MAP, Parameter.SBP, Parameter.DBP, Parameter.HR, Parameter.SPO2)
#: parameters of a check request's ``vitals``
CHECK_PARAMETERS = (Parameter.MAP, Parameter.SBP, Parameter.DBP, Parameter.HR)


def rfc3339_ms(value: datetime) -> str:
    """``2026-11-26T12:00:00.000Z`` (RFC 3339, zone Z, milliseconds)."""
    if value.tzinfo is None:
        raise ValueError("rfc3339_ms needs an aware datetime")
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond // 1000:03d}Z"


def json_number(value: Decimal) -> int | float:
    """A Decimal as a JSON number: integral values stay integers (``75``, not ``75.0``)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _value_dict(obs: Observation) -> JsonObject:
    return {"value": json_number(obs.value), "unit": obs.unit, "at": rfc3339_ms(obs.at)}


@dataclass
class VitalsState:
    """Latest vitals of one bed."""

    bed: str
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    source: str | None = None
    _latest: dict[Parameter, Observation] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0, got {self.stale_after_s}")

    def update(self, sample: VitalsSample) -> bool:
        """Keep each parameter's newest observation; True if any value is new.

        Each observation is held at ``min(stamp, sample.received_at)`` (the clamp). One whose
        clamped time is before the held one's (a late or replayed message) is ignored, so a
        stale value can never overwrite a fresher one; one with the same time but another
        value (a correction, or two readings in the same instant) replaces it. Because the
        held time is never after the receipt, a later-arriving reading stamped at or after
        that receipt always replaces it, however far ahead the held one was stamped.
        """
        changed = False
        for parameter, stamped in sample.observations.items():
            obs = (
                replace(stamped, at=sample.received_at)
                if stamped.at > sample.received_at
                else stamped
            )
            current = self._latest.get(parameter)
            if current is None or obs.at > current.at or (obs.at == current.at and obs != current):
                self._latest[parameter] = obs
                changed = True
        if changed:
            self.source = sample.source
        return changed

    def latest(self, parameter: Parameter) -> Observation | None:
        """The newest observation of ``parameter``, at its clamped time (None if never)."""
        return self._latest.get(parameter)

    def age_s(self, parameter: Parameter, now: datetime) -> float | None:
        """Seconds since ``parameter`` was observed (None if never)."""
        obs = self._latest.get(parameter)
        return None if obs is None else (now - obs.at).total_seconds()

    def is_stale(self, parameter: Parameter, now: datetime) -> bool:
        """True when ``parameter`` is missing or older than ``stale_after_s``."""
        age = self.age_s(parameter, now)
        return age is None or age > self.stale_after_s

    def snapshot(self, now: datetime) -> JsonObject:
        """The ``vitals.state`` data at ``now`` (published as is, and told to the EHR)."""
        data: JsonObject = {}
        for parameter in STATE_PARAMETERS:
            obs = self._latest.get(parameter)
            if obs is None:
                data[parameter.value] = None
                continue
            value = _value_dict(obs)
            if self.is_stale(parameter, now):
                value["stale"] = True
            data[parameter.value] = value
        data["source"] = self.source
        return data

    def check_vitals(self) -> JsonObject | None:
        """The check request's ``vitals`` ({map, sbp, dbp, hr} present ones) or None: part of
        the request ``protocol/`` validates (see daemon/core/gate_request.py).

        Values are passed with their clamped observation time (never after the gateway
        received them) whatever their age: the rule engine judges staleness (VITALS_STALE)
        against the request's ``now``, so a reading stamped ahead cannot pass for fresh.
        """
        data = {
            p.value: _value_dict(obs)
            for p in CHECK_PARAMETERS
            if (obs := self._latest.get(p)) is not None
        }
        return data or None


class VitalsBoard:
    """Vitals of every configured bed; routes each sample to its bed.

    A sample goes to ``sample.bed`` when that bed is configured, else to ``default_bed``
    (e.g. a listener dedicated to one bed's monitor); otherwise it is not routed.
    """

    def __init__(
        self,
        beds: Iterable[str],
        *,
        default_bed: str | None = None,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.beds = {bed: VitalsState(bed, stale_after_s) for bed in beds}
        if default_bed is not None and default_bed not in self.beds:
            raise ValueError(f"default bed {default_bed!r} is not a configured bed")
        self.default_bed = default_bed

    def route(self, sample: VitalsSample) -> str | None:
        """The configured bed this sample belongs to, or None."""
        if sample.bed is not None and sample.bed in self.beds:
            return sample.bed
        return self.default_bed

    def update(self, sample: VitalsSample) -> str | None:
        """Apply the sample; return the bed id when something new was stored."""
        bed = self.route(sample)
        if bed is None:
            return None
        return bed if self.beds[bed].update(sample) else None
