"""A real Modbus TCP proxy on loopback that mangles chosen answers on their way to the driver.

The simulator's own faults act on every answer of a pump; this proxy picks answers by where
they fall in a command: the pre-read, the answer to the write, or the read-back after it. It
drops them (silence), scrambles them (garbage), rewrites their unit id, or trickles them one
byte at a time. Frames are parsed from the MBAP header with a capped buffer; a length field is
only trusted up to the Modbus maximum, anything else is passed through as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MBAP_HEADER = 6
MAX_ADU = 260  # the largest Modbus TCP frame
WRITE_FUNCTIONS = frozenset({6, 16})
GARBAGE_MASK = 0x5A
CHUNK = 4096


class Phase(enum.Enum):
    """Where an answer falls in a confirmed command."""

    PRE_READ = "pre_read"  # a read answered before the pump was written to
    WRITE = "write"  # the answer to a write
    READ_BACK = "read_back"  # a read answered after a write


class Mangle(enum.Enum):
    """What the proxy does to an answer."""

    SILENCE = "silence"  # the answer is dropped
    GARBAGE = "garbage"  # every byte scrambled: no frame
    WRONG_UNIT = "wrong_unit"  # a well-formed answer from another unit id
    TRICKLE = "trickle"  # the answer arrives one byte every ``trickle_s`` seconds


@dataclass
class FaultyLink:
    """The proxy's knobs and what it saw; ``faults`` maps a phase to what is done to it."""

    upstream_host: str
    upstream_port: int
    url: str = ""
    faults: dict[Phase, Mangle] = field(default_factory=dict)
    trickle_s: float = 0.01
    unit: int | None = None  # mangle only this unit's answers (None: every unit)
    wrote: bool = False  # a write request went through (later reads are read-backs)
    mangled: Counter[Phase] = field(default_factory=Counter)
    writers: list[asyncio.StreamWriter] = field(default_factory=list, repr=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def phase_of(self, function_code: int) -> Phase:
        if function_code & 0x7F in WRITE_FUNCTIONS:
            return Phase.WRITE
        return Phase.READ_BACK if self.wrote else Phase.PRE_READ

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        self.writers.append(up_writer)
        try:
            await self._pipe(reader, writer, up_reader, up_writer)
        except asyncio.CancelledError:
            return  # the proxy is shutting down (asyncio's stream callback must not see it)
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._requests(reader, up_writer))
                tg.create_task(self._answers(up_reader, writer))
        except* ConnectionError:
            pass  # either side went away: so does the other

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        """Driver -> simulator, unchanged; notes writes (the answers after them are read-backs)."""
        while data := await reader.read(CHUNK):
            if len(data) > MBAP_HEADER + 1 and data[MBAP_HEADER + 1] in WRITE_FUNCTIONS:
                self.wrote = True
            up.write(data)
            await up.drain()
        up.close()

    async def _answers(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Simulator -> driver, frame by frame, each mangled as its phase says."""
        buffer = b""
        while data := await up.read(CHUNK):
            buffer += data
            while len(buffer) > MBAP_HEADER + 1:
                length = int.from_bytes(buffer[4:6], "big")
                if buffer[2:4] != b"\0\0" or not 2 <= length <= MAX_ADU - MBAP_HEADER:
                    await self._send(writer, buffer)  # not a frame: pass it through as is
                    buffer = b""
                    break
                if len(buffer) < MBAP_HEADER + length:
                    break
                frame, buffer = buffer[: MBAP_HEADER + length], buffer[MBAP_HEADER + length :]
                await self._forward(writer, frame)
            if len(buffer) > MAX_ADU:
                await self._send(writer, buffer)
                buffer = b""
        writer.close()

    async def _forward(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        phase = self.phase_of(frame[MBAP_HEADER + 1])
        mangle = self.faults.get(phase)
        if mangle is None or (self.unit is not None and frame[MBAP_HEADER] != self.unit):
            await self._send(writer, frame)
            return
        self.mangled[phase] += 1
        if mangle is Mangle.SILENCE:
            return
        if mangle is Mangle.GARBAGE:
            await self._send(writer, bytes(b ^ GARBAGE_MASK for b in frame))
        elif mangle is Mangle.WRONG_UNIT:
            wrong = bytearray(frame)
            wrong[MBAP_HEADER] = frame[MBAP_HEADER] % 247 + 1
            await self._send(writer, bytes(wrong))
        else:
            for i in range(len(frame)):
                await self._send(writer, frame[i : i + 1])
                await asyncio.sleep(self.trickle_s)  # the fault itself: slow bytes

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()


@contextlib.asynccontextmanager
async def faulty_link(upstream_url: str, **knobs: object) -> AsyncIterator[FaultyLink]:
    """Proxy ``tcp://host:port`` on a loopback port the OS picks (read back into ``url``)."""
    host, port = upstream_url.removeprefix("tcp://").rsplit(":", 1)
    link = FaultyLink(host, int(port), **knobs)  # type: ignore[arg-type]
    server = await asyncio.start_server(link.handle, "127.0.0.1", 0)
    link.url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield link
    finally:
        server.close()
        for writer in link.writers:
            writer.close()
        for task in link.tasks:
            task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        await server.wait_closed()
