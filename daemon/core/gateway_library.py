"""The gateway's drug-library hot reload: SIGHUP re-reads the library file, a pharmacy pushes one
over ``bridge/request/library``; a library the reloader accepts is swapped in between two
commands (by the ``install`` the gateway gave the reloader), and each pump's drug and profile
with the library in force are journaled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from daemon.base.envelope import Kind, encode, envelope
from daemon.core.channel import Channel
from daemon.journal.records import JournalError, JournalKind
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.bridge import MqttBridge
from daemon.pharmacy.reload import (
    PROGRAMS_KEY,
    LibraryRefused,
    LibraryReloader,
    Use,
    programs_row,
)

log = structlog.get_logger("infusiond.gateway")


def library_uses(channels: Mapping[str, Channel]) -> dict[str, Use]:
    """What each pump runs, which a new library must still cover."""
    return {
        pid: Use(ch.program.profile, ch.program.drug, ch.program.dose_unit)
        for pid, ch in channels.items()
    }


@dataclass
class LibraryHotReload:
    """Runs the gateway's library reloads: on request (SIGHUP, :meth:`request_reload`) from
    ``library_file``, and on each push the bridge receives, answered on
    ``bridge/response/library``."""

    reloader: LibraryReloader
    library_file: Path
    journal: AsyncJournal
    bridge: MqttBridge
    gateway_id: str
    clock: Callable[[], datetime]
    _reload_wanted: asyncio.Event = field(default_factory=asyncio.Event)

    async def journal_programs(self) -> None:
        """Journal each pump's drug and profile and the library in force (what the CQI report
        attributes commands to), when they differ from the last such row: a restart with the
        same programs writes nothing. Never fatal: the report then shows them as unknown."""
        row = programs_row(self.reloader.current(), self.reloader.uses())
        try:
            known = await self.journal.rows(pump_id=PROGRAMS_KEY, kinds=[JournalKind.STATE])
            if not known or known[-1].payload != row:
                await self.journal.append(
                    JournalKind.STATE, row, pump_id=PROGRAMS_KEY, ts=self.clock()
                )
        except JournalError as exc:
            log.warning("programs_not_journaled", error=str(exc))

    def request_reload(self) -> None:
        """Re-read the library file soon (the SIGHUP handler)."""
        self._reload_wanted.set()

    async def reload_on_request(self) -> None:
        """Serve :meth:`request_reload`, one reload at a time (forever)."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            try:
                library = await self.reloader.reload_file(self.library_file)
            except (LibraryRefused, JournalError) as exc:
                reasons = list(getattr(exc, "reasons", [str(exc)]))
                log.warning("library_reload_refused", reasons=reasons)
            else:
                log.info("library_reloaded", version=library.version)

    async def serve_pushes(self) -> None:
        """Answer every library push the bridge receives (forever)."""
        async for incoming in self.bridge.library_requests():
            answer = await self.reloader.push(incoming.payload, retained=incoming.retain)
            body = envelope(
                Kind.LIBRARY_RESPONSE,
                gateway=self.gateway_id,
                session=self.journal.session,
                seq=self.journal.seq,
                ts=self.clock(),
                data=answer.to_json(),
            )
            self.bridge.send_library_response(
                encode(body),
                response_topic=incoming.response_topic,
                correlation_data=incoming.correlation_data,
            )
