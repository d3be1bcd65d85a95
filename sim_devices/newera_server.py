"""New Era simulator transport: one or more pump models behind a TCP socket or a serial port.

Usable in-process from asyncio code::

    sim = NewEraSimulator([NewEraPumpSetup(address=0, rate_ml_h=Decimal("9.0"), running=True)])
    async with sim.serving("tcp://127.0.0.1:0"):
        url = sim.url                   # socket://127.0.0.1:<port>, for the driver
        sim.pumps[0].inject(Fault.GARBLE, count=1)
        await sim.wait_until(lambda: sim.pumps[0].status is Status.STOPPED, within_s=2)

``serving`` also accepts a serial device path (one end of a socat pty pair). Several addresses
share the port like a daisy chain; a command without address goes to pump 0; a command for an
address that is not present gets no answer. Replies use the framing of the command (basic or
safe), and safe framing whenever the pump is in safe mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from drivers.errors import FrameError
from drivers.newera.frames import (
    STX,
    Command,
    CommandStream,
    Reply,
    SafePacket,
    Status,
    command_of,
    encode_reply,
)
from sim_devices.newera_pump import Fault, NewEraPumpModel, NewEraPumpSetup
from sim_devices.serial_server import SerialSimulator

log = structlog.get_logger("sim.newera")

DEFAULT_BAUD = 19200


class NewEraSimulator(SerialSimulator[NewEraPumpSetup, NewEraPumpModel]):
    """New Era pump models on one port, an accelerated clock and the serving transport."""

    vendor = "newera"

    default_baud = DEFAULT_BAUD

    def _default_setups(self) -> Sequence[NewEraPumpSetup]:
        return (NewEraPumpSetup(),)

    def _new_pump(self, setup: NewEraPumpSetup, now: float) -> NewEraPumpModel:
        return NewEraPumpModel(setup, now=now)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = CommandStream()
        while data := await reader.read(1024):
            stream.feed(data)
            while True:
                try:
                    frame = stream.pop()
                    if frame is None:
                        break
                    command = command_of(frame)
                except FrameError as exc:
                    self.frame_errors += 1
                    log.info("newera simulator bad frame", error=str(exc))
                    await self._answer_bad_packet(writer)
                    continue
                pump = self.pumps.get(0 if command.address is None else command.address)
                if pump is None or pump.take_fault(Fault.SILENCE, command):
                    continue
                safe_in = isinstance(frame, SafePacket)
                safe_out = safe_in or pump.safe_timeout_s > 0
                reply = pump.handle(command, self.clock.now(), safe=safe_in)
                await self._notify()
                if pump.take_fault(Fault.HANG_UP, command):
                    log.info("newera simulator hangs up", address=pump.address)
                    writer.close()  # executed; the line drops before the reply
                    return
                in_len = len(frame.serialize())
                await self._send(writer, pump, reply, command, safe=safe_out, in_len=in_len)

    async def _answer_bad_packet(self, writer: asyncio.StreamWriter) -> None:
        """A bad packet is answered ``?COM`` by the first pump in safe mode, if any."""
        for pump in sorted(self.pumps.values(), key=lambda p: p.address):
            if pump.safe_timeout_s:
                reply = Reply(pump.address, pump.status, data="?COM")
                await self._send(writer, pump, reply, None, safe=True, in_len=0)
                return

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        pump: NewEraPumpModel,
        reply: Reply,
        command: Command | None,
        *,
        safe: bool,
        in_len: int,
    ) -> None:
        if pump.take_fault(Fault.DROP_REPLY, command):
            return
        if pump.take_fault(Fault.WRONG_ADDRESS, command):
            reply = Reply((reply.address + 1) % 100, reply.status, reply.data, reply.alarm)
        wire = encode_reply(reply, safe=safe)
        if pump.take_fault(Fault.GARBLE, command):
            i = 3 if len(wire) > 4 else len(wire) // 2
            wire = wire[:i] + bytes([wire[i] ^ 0x40]) + wire[i + 1 :]
        if pump.take_fault(Fault.NOISE, command):
            i = 3 if len(wire) > 4 else len(wire) // 2
            wire = wire[:i] + bytes([wire[i] ^ 0x40]) + wire[i + 1 :] + wire
        if pump.take_fault(Fault.TRUNCATE, command):
            wire = wire[:-2]
        if pump.take_fault(Fault.OVERLONG, command):
            wire = bytes([STX]) + b"00S" + b"9" * 200
        slow = pump.take_fault(Fault.SLOW, command)
        await self._write_reply(
            writer, wire, delay_s=pump.reply_delay_s if slow else None, in_len=in_len
        )


__all__ = ["Fault", "NewEraPumpSetup", "NewEraSimulator", "Status"]
