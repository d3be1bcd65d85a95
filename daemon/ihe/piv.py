"""IHE PCD PIV in (PCD-03): infusion orders from the EHR/BCMA become *pending* programs.

An RGV^O15 is read (:func:`drivers.hl7.piv.parse_rgv`), turned into the equivalent MQTT
``program`` command and handed to :meth:`daemon.core.gate.Gate.submit_order`: the same parsing,
admission and verdict as a command from MQTT, and never a write to the pump. The answer,
RRG^O16 on the same connection (MSA-2 = the order's MSH-10):

- ``AA``: taken for confirmation; ``pump/<id>/command/result`` carries ``needs_confirmation``
  with ``"source": "piv"``, the order id and the command, until a clinician confirms it at the
  bedside through the MQTT confirm flow;
- ``AR``: the verdict rejects the order (hard limit...): ERR-8 names the rule ids;
- ``AE``: the message is malformed (the field is named), the pump is unknown, or the gateway
  refuses the command (control disabled, ordering provider not allowed, bad request).

The listener has the hardening of the vitals listener: one capped MLLP decoder per connection,
an idle timeout, a connection limit (a connection beyond it is closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog

from daemon.base.payload import JsonObject
from daemon.base.results import CommandResult, Phase
from daemon.base.timefmt import format_ts
from daemon.journal.records import JournalError
from drivers.hl7.ack import AckCode, peek_header
from drivers.hl7.errors import Hl7ErrorCode, MessageError
from drivers.hl7.mllp import DEFAULT_MAX_FRAME, Discarded, MllpDecoder, MllpFrame
from drivers.hl7.piv import PivOrder, build_rrg, parse_rgv

log = structlog.get_logger("infusiond.piv")

SubmitOrder = Callable[[str, JsonObject, str], Awaitable[CommandResult]]
"""(pump id, the order as an ``infusiond.pump.command/1`` JSON command, order id) -> the gate's
answer. JSON on purpose: an order goes through the very parser MQTT commands do."""
#: the command id of an order: ``piv-<order id>`` with characters outside [A-Za-z0-9_.-] as _
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_READ_CHUNK = 4096
#: a confirmation may come much later than an MQTT command: the command's ttl is the longest
#: a command may have (the confirm token itself expires after 120 s)
ORDER_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class PumpProgram:
    """What a pump runs, as an order is translated against it (see :func:`order_command`)."""

    infusing: bool
    drug: str
    concentration: Decimal
    concentration_unit: str
    diluent: str
    route: str
    profile: str
    weight_kg: Decimal | None


def order_command(order: PivOrder, program: PumpProgram, *, now: datetime) -> JsonObject:
    """The ``infusiond.pump.command/1`` command equivalent to ``order`` on a pump that runs
    ``program``. An order for the infusion that is running (same drug, same concentration and
    unit, pump infusing) is a titration: ``set_dose``. Anything else is a new ``program`` (route
    and library profile from the pump, weight unless the order gives it), which the gate accepts
    only on a stopped pump."""
    weight = order.weight_kg if order.weight_kg is not None else program.weight_kg
    body: JsonObject = {
        "drug": order.drug,
        "concentration": {
            "value": float(order.concentration.value),
            "unit": order.concentration.unit,
        },
        "diluent": order.diluent or program.diluent,
        "route": program.route,
        "profile": program.profile,
        "dose": {"value": float(order.dose.value), "unit": order.dose.unit},
    }
    if weight is not None:
        body["weight_kg"] = float(weight)
    if order.vtbi is not None:
        body["vtbi"] = {"value": float(order.vtbi.value), "unit": order.vtbi.unit}
    head = {
        "id": _ID_UNSAFE.sub("_", f"piv-{order.order_id}")[:64],
        "issued_at": format_ts(now),
        "ttl_s": ORDER_TTL_S,
        "by": {"clinician": order.ordered_by or "ehr"},
    }
    if (
        program.infusing
        and program.drug.casefold() == order.drug.casefold()
        and program.concentration_unit == order.concentration.unit
        and program.concentration == order.concentration.value
    ):
        return head | {"action": "set_dose", "dose": body["dose"]}
    return head | {"action": "program", "program": body}


def answer_code(result: CommandResult) -> tuple[AckCode, str]:
    """The RRG^O16 MSA-1 and reason for the gate's answer to an order."""
    phase = result.phase
    if phase is Phase.NEEDS_CONFIRMATION:
        return AckCode.AA, ""
    if phase is Phase.DUPLICATE:
        first = None if result.first is None else result.first.phase
        if first is Phase.NEEDS_CONFIRMATION:
            return AckCode.AA, ""
        return AckCode.AE, f"order already answered: {first}"
    if phase is Phase.REJECTED and result.verdict is not None:
        rules = result.verdict.rules("reject")
        return AckCode.AR, "rejected by the drug library: " + ", ".join(rules or ["reject"])
    error = result.error
    code, message = (phase.value, "") if error is None else (error.code.value, error.message)
    return AckCode.AE, f"{code}: {message}".strip()


class PivListener:
    """Accepts EHR connections and answers each RGV^O15 with RRG^O16."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        submit: SubmitOrder,
        program_of: Callable[[str], PumpProgram | None],
        clock: Callable[[], datetime],
        max_frame: int = DEFAULT_MAX_FRAME,
        idle_timeout_s: float = 300.0,
        max_connections: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self.submit = submit
        self.program_of = program_of
        self.clock = clock
        self.max_frame = max_frame
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """``mllp://host:port`` as bound (after :meth:`start`)."""
        return f"mllp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind (port 0: the OS picks; read it back from :attr:`port`)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("piv.listening", url=self.url)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server always runs handlers in a task
            writer.close()
            return
        if len(self._handlers) >= self.max_connections:
            log.warning("piv.connection_refused", limit=self.max_connections)
            writer.close()
            return
        self._handlers.add(task)
        decoder = MllpDecoder(self.max_frame)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        chunk = await reader.read(_READ_CHUNK)
                except TimeoutError:
                    log.info("piv.idle_closed", idle_s=self.idle_timeout_s)
                    return
                if not chunk:
                    return
                for out in decoder.feed(chunk):
                    if isinstance(out, Discarded):
                        log.warning("piv.discarded", reason=out.reason.value, size=out.size)
                        continue
                    answer = await self.handle(out.payload)
                    writer.write(MllpFrame(answer).serialize())
                await writer.drain()
        except OSError as exc:
            log.info("piv.connection_lost", error=str(exc))
        finally:
            self._handlers.discard(task)
            writer.close()

    async def handle(self, payload: bytes) -> bytes:
        """One order in, its RRG^O16 out (never raises for any input)."""
        now = self.clock()
        header = peek_header(payload)
        ack_id = f"PIV{next(self._ids)}"
        rrg = functools.partial(  # what every answer to this message says
            build_rrg,
            answers=header.control_id,
            now=now,
            control_id=ack_id,
            receiving_application=header.sending_application,
            receiving_facility=header.sending_facility,
        )
        try:
            order = parse_rgv(payload)
        except MessageError as exc:
            log.warning("piv.bad_order", error=exc.text, location=exc.location)
            return rrg(code=AckCode.AE, text=exc.text, error=exc.code)
        rrg = functools.partial(rrg, order_id=order.order_id, patient_id=order.patient_id or "")
        program = self.program_of(order.pump_id)
        if program is None:
            text = f"OBX-18 target pump {order.pump_id!r} is not a pump of this gateway"
            log.warning("piv.unknown_pump", order=order.order_id, pump=order.pump_id)
            return rrg(code=AckCode.AE, text=text, error=Hl7ErrorCode.TABLE_VALUE_NOT_FOUND)
        command = order_command(order, program, now=now)
        try:
            result = await self.submit(order.pump_id, command, order.order_id)
        except JournalError as exc:  # no journal, no order: refused, never executed
            log.critical("piv.journal_unavailable", order=order.order_id, error=str(exc))
            return rrg(code=AckCode.AE, text="the gateway cannot write its journal")
        code, text = answer_code(result)
        log.info("piv.order", order=order.order_id, pump=order.pump_id, ack=code.value, why=text)
        return rrg(code=code, text=text)
