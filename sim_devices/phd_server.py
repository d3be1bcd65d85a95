"""PHD ULTRA simulator transport: a pump chain behind a TCP socket or a serial port.

Usable in-process from asyncio code::

    sim = PhdSimulator([PhdPumpSetup(address=0, rate_ml_h=Decimal("9"), running=True)])
    async with sim.serving("tcp://127.0.0.1:0"):
        url = sim.url                      # socket://127.0.0.1:<port>, for the driver
        sim.pumps[0].inject(Fault.GARBLE, count=1)

``serving`` also accepts a serial device path (one end of a socat pty pair). Several addresses
share the port like a pump chain; a command for an address that is not present gets no
answer. Command lines end in CR, LF or CR LF; a line longer than the cap or holding bytes that
are not printable ASCII is dropped and the next line is read afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from drivers.errors import FrameError
from drivers.phd.grammar import Command, Prompt, Reply
from drivers.serial.lines import LineStream
from sim_devices.phd_pump import Fault, PhdPumpModel, PhdPumpSetup
from sim_devices.serial_server import SerialSimulator

log = structlog.get_logger("sim.phd")

DEFAULT_BAUD = 9600


class PhdSimulator(SerialSimulator[PhdPumpSetup, PhdPumpModel]):
    """PHD ULTRA pump models on one chain, an accelerated clock and the serving transport."""

    vendor = "phd"

    default_baud = DEFAULT_BAUD

    def _default_setups(self) -> Sequence[PhdPumpSetup]:
        return (PhdPumpSetup(),)

    def _new_pump(self, setup: PhdPumpSetup, now: float) -> PhdPumpModel:
        return PhdPumpModel(setup, now=now)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = LineStream(cap=512, max_line=96)
        while data := await reader.read(1024):
            stream.feed(data)
            while True:
                try:
                    line = stream.pop_line()
                except FrameError as exc:
                    self.frame_errors += 1
                    log.info("phd simulator bad line", error=str(exc))
                    continue
                if line is None:
                    break
                if not await self._serve_line(line, writer):
                    return

    async def _serve_line(self, line: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one command line; False when the line must drop (hang-up fault)."""
        try:
            command = Command.parse(line)
        except (FrameError, ValueError) as exc:
            self.frame_errors += 1
            address = _address_of(line)
            pump = self.pumps.get(address)
            log.info("phd simulator bad command", error=str(exc), address=address)
            if pump is not None and not pump.take_fault(Fault.SILENCE):
                await self._send(writer, pump, pump.unknown(), None, len(line) + 1)
            return True
        pump = self.pumps.get(command.address)
        if pump is None or pump.take_fault(Fault.SILENCE, command):
            return True
        reply = pump.handle(command, self.clock.now())
        await self._notify()
        if pump.take_fault(Fault.HANG_UP, command):
            log.info("phd simulator hangs up", address=pump.address)
            writer.close()
            return False
        await self._send(writer, pump, reply, command, len(line) + 1)
        return True

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        pump: PhdPumpModel,
        reply: Reply,
        command: Command | None,
        in_len: int,
    ) -> None:
        if pump.take_fault(Fault.DROP_REPLY, command):
            return
        if pump.take_fault(Fault.WRONG_ADDRESS, command):
            reply = Reply((reply.address + 1) % 100, reply.prompt, reply.lines)
        wire = reply.encode()
        if pump.take_fault(Fault.GARBLE, command):
            wire = _corrupt(wire)
        if pump.take_fault(Fault.NOISE, command):
            wire = _corrupt(wire) + wire
        if pump.take_fault(Fault.TRUNCATE, command):
            wire = wire[: -len(reply.prompt.text)]
        if pump.take_fault(Fault.OVERLONG, command):
            wire = b"\n" + b"9" * 300
        slow = pump.take_fault(Fault.SLOW, command)
        await self._write_reply(
            writer, wire, delay_s=pump.reply_delay_s if slow else None, in_len=in_len
        )


def _corrupt(wire: bytes) -> bytes:
    """Flip bit 7 of the first byte after the leading LF: no longer printable ASCII."""
    i = 1 if len(wire) > 1 else 0
    return wire[:i] + bytes([wire[i] | 0x80]) + wire[i + 1 :]


def _address_of(line: str) -> int:
    head, sep, _ = line.partition(":")
    return int(head) if sep and head.isdigit() and len(head) <= 2 else 0


__all__ = ["Fault", "PhdPumpSetup", "PhdSimulator", "Prompt"]
