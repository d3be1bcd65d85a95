"""The gateway's vitals intake: one HL7 source per bed (a listener a monitor connects to, or a
client to a monitor), each sample on its bed's board, the board republished retained."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.base.config import Config
from daemon.base.config_sections import VitalsSource
from daemon.base.envelope import Kind
from daemon.core.vitals import VitalsBoard
from daemon.ihe import outbound as ihe_outbound
from daemon.mqtt.bridge import MqttBridge
from drivers.hl7 import ReceiverConfig, VitalsClient, VitalsListener, VitalsSample


class VitalsIntake:
    """The vitals half of :class:`daemon.core.gateway.Gateway` (which owns the attributes)."""

    config: Config
    bridge: MqttBridge
    clock: Callable[[], datetime]
    boards: dict[str, VitalsBoard]
    listeners: list[VitalsListener]
    vitals_bound: asyncio.Event
    hl7_out: ihe_outbound.Hl7Out | None

    if TYPE_CHECKING:

        def _publish_retained(self, topic: str, kind: Kind, data: dict[str, Any]) -> None: ...

    def _vitals_for(self, bed: str | None) -> dict[str, Any] | None:
        board = self.boards.get(bed) if bed is not None else None
        return board.beds[bed].check_vitals() if board is not None and bed is not None else None

    async def _vitals_source(self, source: VitalsSource) -> None:
        board = self.boards[source.bed]
        bed = source.bed

        def on_sample(sample: VitalsSample) -> None:
            if board.update(sample) is not None:
                self._publish_vitals(bed)
                if self.hl7_out is not None:
                    self.hl7_out.vitals(bed, board.beds[bed].snapshot(self.clock()))

        receiver = ReceiverConfig(on_sample=on_sample)
        url = source.listen or source.connect or ""
        host, _, port = url.split("://", 1)[1].rpartition(":")
        if source.listen is not None:
            listener = VitalsListener(receiver, host=host, port=int(port))
            await listener.start()
            self.listeners.append(listener)
            if len(self.listeners) == sum(1 for v in self.config.vitals if v.listen is not None):
                self.vitals_bound.set()
        else:
            client = VitalsClient(receiver, host=host, port=int(port))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(client.run(), name=f"vitals-client:{bed}")
                await self._republish_vitals(bed, source.publish_every_s)
            return
        await self._republish_vitals(bed, source.publish_every_s)

    async def _republish_vitals(self, bed: str, every_s: float) -> None:
        while True:
            self._publish_vitals(bed)
            await asyncio.sleep(every_s)

    def _publish_vitals(self, bed: str) -> None:
        data = self.boards[bed].beds[bed].snapshot(self.clock())
        self._publish_retained(self.bridge.topics.vitals_state(bed), Kind.VITALS_STATE, data)
