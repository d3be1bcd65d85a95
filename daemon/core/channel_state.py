"""The ``pump.state`` payload (docs/schemas/infusiond.pump.state-1.json) of one pump, built from
what its channel knows (:func:`state_payload`, a function of explicit inputs: the channel owns
the state, this only spells it as the contract publishes it), and when it is published
(:class:`StatePublisher`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity, optional_json
from daemon.base.timefmt import format_ts
from daemon.core.channel_types import Latched, refresh_phase
from daemon.core.program import Program
from drivers.base import ConnectionState, Identity, PumpStatus

#: keys that move with every poll: they ride along with real changes and the periodic refresh
#: instead of making every poll a publish
_REFRESH_ONLY = frozenset({"last_poll", "volume_infused", "battery"})


def state_payload(
    *,
    pump_id: str,
    driver_kind: str,
    program: Program,
    connection: ConnectionState,
    status: PumpStatus | None,
    dose: Quantity | None,
    identity: Identity | None,
    last_poll: datetime | None,
    alarms: Iterable[Latched],
) -> JsonObject:
    """The ``pump.state`` data; ``dose`` is the dose ``status``'s rate delivers under
    ``program`` (the channel computes it)."""
    s = status
    p = program
    return {
        "pump_id": pump_id,
        "connection": connection.value,
        "status": s.state.value if s else None,
        "rate": Quantity.rate(s.rate_ml_h).to_json() if s else None,
        "dose": optional_json(dose) if s else None,
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
            for a in sorted(alarms, key=lambda a: a.code)
        ],
        "device": {
            "driver": driver_kind,
            "model": identity.model if identity else None,
            "serial": identity.serial if identity else None,
            "firmware": identity.firmware if identity else None,
        },
        "last_poll": format_ts(last_poll) if last_poll else None,
    }


@dataclass
class StatePublisher:
    """Publishes one pump's retained state when it changed, or once its refresh period passed."""

    pump_id: str
    publish: Callable[[str, JsonObject], Awaitable[None]]
    every_s: float
    _last: JsonObject | None = None  # the last published state, refresh-only keys cut
    _last_at: float = 0.0  # time.monotonic() of that publish

    def spread(self) -> None:
        """Spread the periodic refreshes of many pumps over the refresh period (a fixed phase
        per pump id) instead of having them all fall due in the same poll round: a burst of
        hundreds of state publishes delays every poll scheduled around it
        (docs/performance.md)."""
        self._last_at -= refresh_phase(self.pump_id) * self.every_s

    async def offer(self, data: JsonObject, *, force: bool = False) -> None:
        """Publish ``data`` if it changed (refresh-only keys aside), if the refresh period has
        passed, or when ``force``."""
        comparable = {k: v for k, v in data.items() if k not in _REFRESH_ONLY}
        stale = time.monotonic() - self._last_at >= self.every_s
        if force or stale or comparable != self._last:
            self._last = comparable
            self._last_at = time.monotonic()
            await self.publish(self.pump_id, data)
