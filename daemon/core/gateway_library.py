"""The gateway's drug-library hot reload: SIGHUP re-reads the library file, a pharmacy pushes one
over ``bridge/request/library``; a library the reloader accepts is swapped in between two
commands, and each pump's drug and profile with the library in force are journaled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from daemon.base.config import Config
from daemon.base.envelope import Kind, encode, envelope
from daemon.core.channel import Channel
from daemon.core.gate import Gate
from daemon.core.parts import library_path
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
from protocol.library import Library

log = structlog.get_logger("infusiond.gateway")


class LibraryHotReload:
    """The library half of :class:`daemon.core.gateway.Gateway` (which owns the attributes)."""

    config: Config
    library: Library
    gate: Gate
    journal: AsyncJournal
    bridge: MqttBridge
    channels: dict[str, Channel]
    clock: Callable[[], datetime]
    reloader: LibraryReloader
    _reload_wanted: asyncio.Event

    if TYPE_CHECKING:

        def _publish_retained(self, topic: str, kind: Kind, data: dict[str, Any]) -> None: ...

        def _bridge_info(self) -> dict[str, Any]: ...

    def _install_library(self, library: Library) -> None:
        """The swap: one assignment each, between two commands (the loop is single-threaded);
        then ``bridge/info`` names the new library."""
        self.library = library
        self.gate.library = library
        self._publish_retained(
            self.bridge.topics.bridge_info, Kind.BRIDGE_INFO, self._bridge_info()
        )

    def _library_uses(self) -> dict[str, Use]:
        return {
            pid: Use(ch.program.profile, ch.program.drug, ch.program.dose_unit)
            for pid, ch in self.channels.items()
        }

    async def _journal_programs(self) -> None:
        """Journal each pump's drug and profile and the library in force (what the CQI report
        attributes commands to), when they differ from the last such row: a restart with the
        same programs writes nothing. Never fatal: the report then shows them as unknown."""
        row = programs_row(self.library, self._library_uses())
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

    async def _reload_on_request(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            try:
                library = await self.reloader.reload_file(library_path(self.config))
            except (LibraryRefused, JournalError) as exc:
                reasons = list(getattr(exc, "reasons", [str(exc)]))
                log.warning("library_reload_refused", reasons=reasons)
            else:
                log.info("library_reloaded", version=library.version)

    async def _serve_library_requests(self) -> None:
        async for incoming in self.bridge.library_requests():
            data = await self.reloader.push(incoming.payload, retained=incoming.retain)
            body = envelope(
                Kind.LIBRARY_RESPONSE,
                gateway=self.config.gateway_id,
                session=self.journal.session,
                seq=self.journal.seq,
                ts=self.clock(),
                data=data,
            )
            self.bridge.send_library_response(
                encode(body),
                response_topic=incoming.response_topic,
                correlation_data=incoming.correlation_data,
            )
