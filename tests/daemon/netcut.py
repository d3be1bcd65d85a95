"""A loopback TCP forwarder whose link can be cut and restored: a real network outage between
one client and the broker, while other clients stay connected to the broker directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class CuttableLink:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>`` while up; while cut,
    connections are refused, as when the broker is unreachable."""

    target_port: int
    port: int = 0
    up: bool = True
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.up = True

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cut(self) -> None:
        """Drop every forwarded connection and stop listening (connections are refused)."""
        self.up = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst, name in ((reader, up_writer, "down->up"), (up_reader, writer, "up->down")):
            task = asyncio.create_task(self._pipe(src, dst), name=f"netcut-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        self._writers.discard(dst)


@contextlib.asynccontextmanager
async def cuttable_link(target_port: int) -> AsyncIterator[CuttableLink]:
    link = CuttableLink(target_port)
    await link.start()
    try:
        yield link
    finally:
        await link.close()
