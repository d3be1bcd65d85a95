"""What ``infusiond watch`` keeps of each pump's and bed's latest state, read once from the
retained ``pump.state`` / ``vitals.state`` data when it arrives.

Lenient by design: a terminal view shows what it can of a payload off contract (a field of the
wrong type is shown as unknown, ``-``) rather than drop the whole pump; what cannot be read
as an envelope at all is counted as a problem by :class:`~daemon.ui.watch.WatchModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from daemon.base.quantities import Quantity


def shown_quantity(data: object) -> Quantity | None:
    """A ``{value, unit}`` object as a :class:`Quantity`; None (shown ``-``) when it is not
    one (null, a missing unit, a non-finite number)."""
    try:
        return Quantity.from_json(data)
    except ValueError:  # PayloadError included: off contract, shown as unknown
        return None


@dataclass(frozen=True, slots=True)
class PumpView:
    """One pump's line: connection, status, drug, dose, rate and active alarm codes."""

    connection: str
    status: str
    drug: str | None
    dose: Quantity | None
    rate: Quantity | None
    alarms: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PumpView:
        """The ``data`` of a ``pump.state`` envelope (a missing connection or status reads
        ``?``; alarms that are not objects are left out)."""
        alarms = data.get("alarms")
        codes = (
            tuple(str(a.get("code")) for a in alarms if isinstance(a, Mapping))
            if isinstance(alarms, list)
            else ()
        )
        drug = data.get("drug")
        return cls(
            connection=str(data.get("connection", "?")),
            status=str(data.get("status", "?")),
            drug=str(drug) if drug else None,
            dose=shown_quantity(data.get("dose")),
            rate=shown_quantity(data.get("rate")),
            alarms=codes,
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One vital sign: its number (None: not a number), whether it is stale, and when it was
    measured (None: no time with a zone)."""

    value: float | None
    stale: bool
    at: datetime | None

    @classmethod
    def from_json(cls, data: object) -> Reading | None:
        """A reading object; None when there is none (``null``, not an object)."""
        if not isinstance(data, Mapping):
            return None
        value = data.get("value")
        number = None if isinstance(value, bool) or not isinstance(value, int | float) else value
        at: datetime | None = None
        if isinstance(data.get("at"), str):
            try:
                at = datetime.fromisoformat(str(data["at"]))
            except ValueError:
                at = None
            if at is not None and at.tzinfo is None:
                at = None
        return cls(None if number is None else float(number), bool(data.get("stale")), at)


@dataclass(frozen=True, slots=True)
class BedView:
    """One bed's line: its readings and the source of its vitals."""

    map: Reading | None
    sbp: Reading | None
    dbp: Reading | None
    hr: Reading | None
    spo2: Reading | None
    source: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> BedView:
        """The ``data`` of a ``vitals.state`` envelope."""
        source = data.get("source")
        return cls(
            map=Reading.from_json(data.get("map")),
            sbp=Reading.from_json(data.get("sbp")),
            dbp=Reading.from_json(data.get("dbp")),
            hr=Reading.from_json(data.get("hr")),
            spo2=Reading.from_json(data.get("spo2")),
            source=str(source) if source else None,
        )

    def newest(self) -> datetime | None:
        """When its newest reading was measured (None: no reading has a time)."""
        readings = (self.map, self.sbp, self.dbp, self.hr, self.spo2)
        return max((r.at for r in readings if r is not None and r.at is not None), default=None)
