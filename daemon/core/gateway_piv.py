"""The gateway's IHE PCD PIV listener (``[piv]``): hospital orders in, each translated against
what its pump runs now and checked by the gate like a command (never sent to the pump)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from daemon.base.config_sections import PivConfig
from daemon.core.channel import Channel
from daemon.core.gate import Gate
from daemon.ihe.piv import PivListener, PumpProgram
from drivers.base import RunState


def pump_program(channel: Channel) -> PumpProgram:
    """What ``channel``'s pump runs, as an order is translated against it."""
    p = channel.program
    status = channel.status
    return PumpProgram(
        infusing=status is not None and status.state is RunState.INFUSING,
        drug=p.drug,
        concentration=p.concentration,
        concentration_unit=p.concentration_unit,
        diluent=p.diluent,
        route=p.route,
        profile=p.profile,
        weight_kg=p.weight_kg,
    )


def piv_listener(
    cfg: PivConfig, gate: Gate, channels: Mapping[str, Channel], clock: Callable[[], datetime]
) -> PivListener:
    """The listener of ``cfg``, submitting each order to ``gate``."""
    return PivListener(
        host=cfg.host,
        port=cfg.port,
        submit=lambda pump_id, command, order_id: gate.submit_order(
            pump_id, command, order_id=order_id
        ),
        program_of=lambda pid: pump_program(channels[pid]) if pid in channels else None,
        clock=clock,
        max_frame=cfg.max_frame,
        idle_timeout_s=cfg.idle_timeout_s,
        max_connections=cfg.max_connections,
    )
