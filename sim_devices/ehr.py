"""A simulated EHR / alarm manager: receives IHE PCD DEC, IPEC and ACM over MLLP and ACKs them.

For biomed benches (``infusiond sim ehr``) and tests. Each message is read with the same
capped MLLP decoder as the gateway's own listener, summarised as a :class:`Received` (profile,
control id, PID, OBR-4, OBX values) and acknowledged (``AA``, or ``AE``/``AR`` when told to
refuse). Messages are kept in arrival order; ``on_message`` is called for each (the CLI prints
one line or a JSON record).

Duplicates (a message re-sent after a lost ACK) are recognised by MSH-10 and ACKed again
without being recorded twice: :attr:`EhrSimulator.duplicates` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.clock import utc_now
from drivers.hl7.ack import AckCode, build_ack, parse_ack, peek_header
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.mllp import DEFAULT_MAX_FRAME, Discarded, MllpDecoder, MllpFrame

log = structlog.get_logger(__name__)

#: MSH-9 -> the IHE PCD profile it belongs to
PROFILES = {"ORU^R01": "DEC", "ORU^R42": "IPEC", "ORU^R40": "ACM", "RRG^O16": "PIV-ANSWER"}
_MAX_CONNECTIONS = 8
_READ_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Observation:
    """One OBX as the EHR charts it."""

    ident: str  # MDC: OBX-3.2 (the reference id); other systems: OBX-3.1 (the code)
    sub_id: str  # OBX-4 containment
    value: str
    unit: str  # OBX-6.2, else OBX-6.1
    flags: str = ""  # OBX-8


@dataclass(frozen=True, slots=True)
class Received:
    """One message received from the gateway."""

    profile: str  # DEC / IPEC / ACM / other MSH-9
    control_id: str
    message_type: str
    profile_id: str  # MSH-21.1
    patient: str  # PID-3.1
    subject: str  # OBR-4 read like OBX-3 (device or event)
    filler: str  # OBR-3.1 (ACM: the alarm identity)
    observations: tuple[Observation, ...]
    raw: bytes = field(repr=False)

    def value(self, ident: str) -> str | None:
        """The value of the first OBX with this identifier (reference id or code)."""
        return next((o.value for o in self.observations if o.ident == ident), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly record (``--json``)."""
        return {
            "profile": self.profile,
            "control_id": self.control_id,
            "message_type": self.message_type,
            "profile_id": self.profile_id,
            "patient": self.patient,
            "subject": self.subject,
            "filler": self.filler,
            "observations": [
                {"id": o.ident, "sub_id": o.sub_id, "value": o.value, "unit": o.unit}
                | ({"flags": o.flags} if o.flags else {})
                for o in self.observations
            ],
        }

    def line(self) -> str:
        """One human line: profile, control id, subject and the OBX values."""
        values = " ".join(
            f"{o.ident}={o.value}{(' ' + o.unit) if o.unit else ''}"
            for o in self.observations
            if o.value
        )
        return f"{self.profile} {self.control_id} {self.patient} {self.subject} {values}".strip()


def summarise(payload: bytes) -> Received:
    """Read the fields the EHR charts. Raises MessageError when there is no MSH."""
    text = payload.decode("utf-8", errors="replace").replace("\n", "\r")
    segments = [s.split("|") for s in text.split("\r") if s]
    if not segments or segments[0][0] != "MSH":
        raise MessageError("message does not start with MSH", segment="MSH")

    def comp(fields: list[str], n: int, c: int = 0) -> str:
        if n >= len(fields):
            return ""
        parts = fields[n].split("~")[0].split("^")
        return parts[c] if c < len(parts) else ""

    msh = ["MSH", "|", *segments[0][1:]]

    def ident(fields: list[str], n: int) -> str:
        """The MDC reference id (CWE.2 when the system is MDC), else the code (CWE.1)."""
        if comp(fields, n, 2) == "MDC" and comp(fields, n, 1):
            return comp(fields, n, 1)
        return comp(fields, n, 0)

    mtype = "^".join(msh[9].split("^")[:2]) if len(msh) > 9 else ""
    pid = next((s for s in segments if s[0] == "PID"), [])
    obr = next((s for s in segments if s[0] == "OBR"), [])
    obs = tuple(
        Observation(
            ident=ident(s, 3),
            sub_id=s[4] if len(s) > 4 else "",
            value=s[5] if len(s) > 5 else "",
            unit=comp(s, 6, 1) or comp(s, 6, 0),
            flags=s[8] if len(s) > 8 else "",
        )
        for s in segments
        if s[0] == "OBX"
    )
    return Received(
        profile=PROFILES.get(mtype, mtype),
        control_id=msh[10] if len(msh) > 10 else "",
        message_type=msh[9] if len(msh) > 9 else "",
        profile_id=comp(msh, 21),
        patient=comp(pid, 3),
        subject=ident(obr, 4),
        filler=comp(obr, 3),
        observations=obs,
        raw=payload,
    )


@dataclass
class EhrSimulator:
    """The EHR side of ``[hl7_out]``: listen, ACK, record."""

    host: str = "127.0.0.1"
    port: int = 0
    max_frame: int = DEFAULT_MAX_FRAME
    #: answer every message with this code (AA by default; AE/AR to test refusals)
    answer: AckCode = AckCode.AA
    on_message: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    duplicates: int = 0
    #: fault injection: record the next N messages but close the connection instead of ACKing
    drop_acks: int = 0
    #: set whenever a message is recorded (tests wait on it)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _seen: set[str] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start(self) -> int:
        """Listen (port 0 picks one; the same port is reused after :meth:`stop`)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection (an EHR outage)."""
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            for task in list(self._handlers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
            self._server = None

    def of(self, profile: str) -> list[Received]:
        """The messages of one profile (DEC, IPEC, ACM), in arrival order."""
        return [r for r in self.received if r.profile == profile]

    async def wait_for(self, predicate: Callable[[list[Received]], bool]) -> None:
        """Wait until ``predicate(received)`` holds."""
        while not predicate(self.received):
            self.changed.clear()
            await self.changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if len(self._handlers) > _MAX_CONNECTIONS:
                return
            decoder = MllpDecoder(self.max_frame)
            while chunk := await reader.read(_READ_CHUNK):
                for out in decoder.feed(chunk):
                    if isinstance(out, Discarded):
                        log.warning("ehr.discarded", reason=out.reason.value, size=out.size)
                        continue
                    ack = self._take(out.payload)
                    if self.drop_acks > 0:
                        self.drop_acks -= 1
                        return
                    writer.write(MllpFrame(ack).serialize())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    def _take(self, payload: bytes) -> bytes:
        header = peek_header(payload)
        now = utc_now()
        ack_id = f"EHR{next(self._ids)}"
        try:
            message = summarise(payload)
        except MessageError as exc:
            return build_ack(
                header,
                now=now,
                ack_control_id=ack_id,
                error=exc,
                application="EHR-SIM",
                facility="SIMLAB",
            )
        if message.control_id in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(message.control_id)
            self.received.append(message)
            self.changed.set()
            if self.on_message is not None:
                self.on_message(message)
        error = None
        if self.answer is not AckCode.AA:
            error = MessageError(
                f"refused by the simulated EHR ({self.answer.value})",
                segment="MSH",
                field=10,
                code=Hl7ErrorCode.APPLICATION_ERROR,
            )
        ack = build_ack(
            header,
            now=now,
            ack_control_id=ack_id,
            error=error,
            application="EHR-SIM",
            facility="SIMLAB",
        )
        if self.answer is AckCode.AR:
            ack = ack.replace(b"MSA|AE|", b"MSA|AR|", 1)
        return ack


async def send_order(
    host: str, port: int, payload: bytes, *, timeout_s: float = 10.0
) -> tuple[AckCode, str, bytes]:
    """Send one order (an RGV^O15) the way an EHR does and return the RRG^O16's MSA-1, its
    text (MSA-3 / ERR-8) and the raw answer. Raises TimeoutError or MessageError."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(MllpFrame(payload).serialize())
        await writer.drain()
        decoder = MllpDecoder(DEFAULT_MAX_FRAME)
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(_READ_CHUNK):
                for out in decoder.feed(chunk):
                    if isinstance(out, MllpFrame):
                        ack = parse_ack(out.payload)
                        return ack.code, ack.text, out.payload
        raise MessageError("the gateway closed the connection without answering")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
