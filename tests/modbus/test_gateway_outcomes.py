"""Through the whole gateway (real mosquitto, the real Gateway, the Modbus simulator): a
command to a pump that misbehaves on the wire always gets its final answer after ``accepted``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from sim_devices.modbus_pump import Fault
from tests.e2e.harness import command, dose, running_bedside
from tests.support.procs import Mosquitto

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_garbage_at_the_pre_read_ends_failed_not_sent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The pump answers garbage: the client sees ``accepted`` then ``failed`` whose message
    starts "not sent:", and the pump still runs its old rate."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        bed.modbus.inject(Fault.GARBAGE, unit=1)
        cmd = command(dose=dose(0.06))
        await bed.watch.send("pump-1", cmd)
        await bed.watch.result(cmd["id"], "accepted")
        failed = await bed.watch.result(cmd["id"], "failed")
        assert failed["error"]["message"].startswith("not sent: apply_rate")
        assert bed.modbus.pump(1).rate == Decimal("52.50")
        bed.modbus.clear(Fault.GARBAGE, unit=1)


async def test_a_lost_answer_to_the_write_ends_uncertain(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The pump executes the write but its answer is lost: ``accepted`` then ``uncertain``
    (never ``applied`` by default), and the write reached the pump once."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        bed.modbus.inject(Fault.LOST_ANSWER, unit=1)
        cmd = command(dose=dose(0.06))
        await bed.watch.send("pump-1", cmd)
        await bed.watch.result(cmd["id"], "accepted")
        uncertain = await bed.watch.result(cmd["id"], "uncertain")
        assert "not resent" in uncertain["error"]["message"]
        assert bed.modbus.pump(1).rate == Decimal("63.00")
        bed.modbus.clear(Fault.LOST_ANSWER, unit=1)
