"""The raw baseline of ``command_rtt``: the least a correct gateway must do for one command.

Run as its own process (like the daemon): ``python -m bench.raw_gateway --broker-port P
--modbus tcp://127.0.0.1:Q [--unit 1]``. It subscribes (QoS 1) to :data:`COMMAND_TOPIC`; for each
message ``{"id", "rate"}`` (rate in mL/h) it writes holding registers 20-23 of the
``generic-pump-v1`` map in ONE request (``rate_setpoint`` u32, ``command`` 6 = apply_rate,
``command_seq``), reads registers 1-25 ONCE, checks that ``executed_seq`` echoes the seq and
that the rate reads back as written, and publishes ``{"id", "ok"}`` (QoS 1) on
:data:`RESULT_TOPIC`. No journal, no check, no pre-read: one MQTT round trip plus two Modbus
round trips, which is the floor the daemon's ``command -> applied`` is compared with.

TCP_NODELAY everywhere: the MQTT socket sets it explicitly (as the daemon does); pymodbus runs on
asyncio, whose TCP transports set it on every socket they create (as in the daemon's driver).
The line ``raw gateway ready`` on stdout says it is subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from decimal import Decimal

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

COMMAND_TOPIC = "bench/raw/command"
RESULT_TOPIC = "bench/raw/result"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
#: generic-pump-v1: rate_setpoint u32 at 20-21, command at 22, command_seq at 23 (written last)
WRITE_ADDRESS = 20
APPLY_RATE = 6
#: registers 1-25 (status .. last_result): one read
READ_ADDRESS, READ_COUNT = 1, 25
RATE_AT, EXECUTED_SEQ_AT = 3, 24  # addresses inside that read
RATE_SCALE = Decimal("0.01")


def mqtt_client(port: int, name: str) -> aiomqtt.Client:
    """An MQTT v5 client on loopback with TCP_NODELAY (the bench's clients are all like it)."""
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )


class RawGateway:
    """One pump on one Modbus TCP connection, commanded over MQTT with nothing in between."""

    def __init__(self, modbus: AsyncModbusTcpClient, unit: int) -> None:
        self._modbus = modbus
        self._unit = unit
        self._seq = 0

    async def start(self) -> None:
        """Learn the pump's ``executed_seq`` (once, before any command is timed)."""
        pdu = await self._modbus.read_holding_registers(
            READ_ADDRESS, count=READ_COUNT, device_id=self._unit
        )
        self._seq = pdu.registers[EXECUTED_SEQ_AT - READ_ADDRESS]

    async def command(self, rate_ml_h: Decimal) -> bool:
        """Write the rate with the next seq (one request), read back once: True when the pump
        executed that seq and runs that rate."""
        self._seq = (self._seq + 1) & 0xFFFF or 1
        raw = int(rate_ml_h / RATE_SCALE)
        words = [raw >> 16, raw & 0xFFFF, APPLY_RATE, self._seq]
        await self._modbus.write_registers(WRITE_ADDRESS, words, device_id=self._unit)
        pdu = await self._modbus.read_holding_registers(
            READ_ADDRESS, count=READ_COUNT, device_id=self._unit
        )
        regs = pdu.registers
        rate = (regs[RATE_AT - READ_ADDRESS] << 16) | regs[RATE_AT - READ_ADDRESS + 1]
        return regs[EXECUTED_SEQ_AT - READ_ADDRESS] == self._seq and rate == raw


async def serve(broker_port: int, modbus_url: str, unit: int) -> None:
    host, port = modbus_url.removeprefix("tcp://").rsplit(":", 1)
    modbus = AsyncModbusTcpClient(host, port=int(port), retries=0)
    if not await modbus.connect():
        raise SystemExit(f"--modbus: cannot connect to {modbus_url}")
    gateway = RawGateway(modbus, unit)
    await gateway.start()
    async with mqtt_client(broker_port, "bench-raw-gateway") as client:
        await client.subscribe(COMMAND_TOPIC, qos=1)
        sys.stdout.write("raw gateway ready\n")
        sys.stdout.flush()
        async for message in client.messages:
            request = json.loads(message.payload)
            ok = await gateway.command(Decimal(str(request["rate"])))
            reply = json.dumps({"id": request["id"], "ok": ok}).encode()
            await client.publish(RESULT_TOPIC, reply, qos=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--modbus", required=True, help="tcp://host:port of a simulator")
    parser.add_argument("--unit", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(serve(args.broker_port, args.modbus, args.unit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
