"""A channel's public view of its pump: the ``pump.state`` payload and the dose objects in it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from daemon.base.quantities import Quantity, optional_json
from daemon.base.timefmt import format_ts
from daemon.core.channel_types import DoseConverter, Latched
from daemon.core.program import Program
from drivers.base import ConnectionState, Driver, Identity, PumpStatus


class StatePayload:
    """The state half of :class:`daemon.core.channel.Channel` (which owns the attributes)."""

    pump_id: str
    driver: Driver
    program: Program
    dose_at: DoseConverter
    connection: ConnectionState
    status: PumpStatus | None
    identity: Identity | None
    last_poll: datetime | None
    _alarm_since: dict[str, Latched]

    def dose_obj(self, rate_ml_h: Decimal) -> Quantity | None:
        """The dose a rate delivers under the current program, as published (6 decimals)."""
        dose = self.dose_at(self.program, rate_ml_h)
        if dose is None:
            return None
        return Quantity(float(round(dose, 6)), self.program.dose_unit)

    def current_dose(self) -> Decimal | None:
        """The running dose (None when stopped or unknown)."""
        if self.status is None or self.status.state.value != "infusing":
            return None
        return self.dose_at(self.program, self.status.rate_ml_h)

    # -- state payload ----------------------------------------------------------------------

    def state_data(self) -> dict[str, Any]:
        """The ``pump.state`` data (docs/schemas/infusiond.pump.state-1.json)."""
        s = self.status
        p = self.program
        return {
            "pump_id": self.pump_id,
            "connection": self.connection.value,
            "status": s.state.value if s else None,
            "rate": Quantity.rate(s.rate_ml_h).to_json() if s else None,
            "dose": optional_json(self.dose_obj(s.rate_ml_h)) if s else None,
            "drug": p.drug,
            "concentration": {"value": float(p.concentration), "unit": p.concentration_unit},
            "diluent": p.diluent,
            "route": p.route,
            "profile": p.profile,
            "weight_kg": float(p.weight_kg) if p.weight_kg is not None else None,
            "bed": p.bed,
            # a VTBI of 0 means "no volume limit" on these devices: published as null
            "vtbi": Quantity.volume(s.vtbi_ml).to_json() if s and s.vtbi_ml else None,
            "volume_infused": (
                Quantity.volume(s.volume_infused_ml).to_json()
                if s and s.volume_infused_ml is not None
                else None
            ),
            "battery": s.battery_pct if s else None,
            "alarms": [
                {"code": a.code, "priority": a.priority.value, "since": format_ts(a.since)}
                for a in sorted(self._alarm_since.values(), key=lambda a: a.code)
            ],
            "device": {
                "driver": self.driver.kind,
                "model": self.identity.model if self.identity else None,
                "serial": self.identity.serial if self.identity else None,
                "firmware": self.identity.firmware if self.identity else None,
            },
            "last_poll": format_ts(self.last_poll) if self.last_poll else None,
        }
