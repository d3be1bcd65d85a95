"""The gateway's vitals intake: one HL7 source per bed (a listener a monitor connects to, or a
client to a monitor), each sample on its bed's board, the board republished retained."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from daemon.base.config_sections import VitalsSource
from daemon.base.payload import JsonObject
from daemon.core.vitals import VitalsBoard
from daemon.ihe import outbound as ihe_outbound
from drivers.hl7 import ReceiverConfig, VitalsClient, VitalsListener, VitalsSample

PublishVitals = Callable[[str, JsonObject], None]
"""(bed, the ``vitals.state`` data) -> published retained on ``vitals/<bed>/state``."""


@dataclass
class VitalsIntake:
    """The vitals of every configured source: a board per bed, fed by its source's task
    (:meth:`run_source`), read by the gate (:meth:`vitals_for`)."""

    sources: Sequence[VitalsSource]
    publish: PublishVitals
    clock: Callable[[], datetime]
    #: IHE PCD DEC to the EHR, when configured: told every new board state
    hl7_out: ihe_outbound.Hl7Out | None = None
    boards: dict[str, VitalsBoard] = field(init=False)
    listeners: list[VitalsListener] = field(default_factory=list, init=False)
    #: set once every vitals listener is bound: READY means a monitor can connect
    bound: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.boards = {
            s.bed: VitalsBoard([s.bed], default_bed=s.bed, stale_after_s=s.stale_after_s)
            for s in self.sources
        }
        if not any(s.listen is not None for s in self.sources):
            self.bound.set()

    def vitals_for(self, bed: str | None) -> JsonObject | None:
        """The ``vitals`` of a check request for ``bed`` (None without a source or readings)."""
        board = self.boards.get(bed) if bed is not None else None
        return board.beds[bed].check_vitals() if board is not None and bed is not None else None

    async def run_source(self, source: VitalsSource) -> None:
        """Receive ``source``'s samples and republish its bed's board (forever)."""
        board = self.boards[source.bed]
        bed = source.bed

        def on_sample(sample: VitalsSample) -> None:
            if board.update(sample) is not None:
                self._publish(bed)
                if self.hl7_out is not None:
                    self.hl7_out.vitals(bed, board.beds[bed].snapshot(self.clock()))

        receiver = ReceiverConfig(on_sample=on_sample)
        url = source.listen or source.connect or ""
        host, _, port = url.split("://", 1)[1].rpartition(":")
        if source.listen is not None:
            listener = VitalsListener(receiver, host=host, port=int(port))
            await listener.start()
            self.listeners.append(listener)
            if len(self.listeners) == sum(1 for v in self.sources if v.listen is not None):
                self.bound.set()
        else:
            client = VitalsClient(receiver, host=host, port=int(port))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(client.run(), name=f"vitals-client:{bed}")
                await self._republish(bed, source.publish_every_s)
            return
        await self._republish(bed, source.publish_every_s)

    async def _republish(self, bed: str, every_s: float) -> None:
        while True:
            self._publish(bed)
            await asyncio.sleep(every_s)

    def _publish(self, bed: str) -> None:
        self.publish(bed, self.boards[bed].beds[bed].snapshot(self.clock()))
