"""PIV (PCD-03) orders: every malformed order is answered AE naming the field, and nothing is
submitted; the listener caps frames, closes idle peers and limits connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from daemon.base.results import CommandResult
from daemon.ihe.piv import PivListener, PumpProgram, answer_code, order_command
from drivers.hl7.ack import AckCode, parse_ack
from drivers.hl7.errors import MessageError
from drivers.hl7.mllp import MllpDecoder, MllpFrame
from drivers.hl7.piv import build_rgv, parse_rgv
from sim_devices.ehr import send_order
from tests.ihe.conftest import NOW

PROGRAM = PumpProgram(
    infusing=True,
    drug="norepinephrine",
    concentration=Decimal("4.0"),
    concentration_unit="ug/mL",
    diluent="D5W",
    route="central",
    profile="adult-icu",
    weight_kg=Decimal("70.0"),
)


def rgv(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "control_id": "o-1",
        "now": NOW,
        "order_id": "ORD-1",
        "pump_id": "pump-1",
        "drug": "norepinephrine",
        "concentration": ("4", "ug/mL"),
        "dose": ("0.06", "ug/kg/min"),
        "ordered_by": "dr-2",
        "diluent": "D5W",
        "vtbi": ("250", "mL"),
        "patient_id": "MRN-1",
        "bed": "bed-1",
    }
    fields.update(overrides)
    return build_rgv(**fields)


def test_order_fields_are_read() -> None:
    order = parse_rgv(rgv(weight_kg="72.5"))
    assert (order.order_id, order.pump_id, order.drug) == ("ORD-1", "pump-1", "norepinephrine")
    assert (order.dose.value, order.dose.unit) == (Decimal("0.06"), "ug/kg/min")
    assert (order.concentration.value, order.concentration.unit) == (Decimal(4), "ug/mL")
    assert order.vtbi is not None
    assert order.vtbi.value == Decimal(250)
    assert (order.diluent, order.weight_kg, order.ordered_by) == ("D5W", Decimal("72.5"), "dr-2")
    assert (order.patient_id, order.bed, order.control_id) == ("MRN-1", "bed-1", "o-1")


@pytest.mark.parametrize(
    ("mangle", "location", "words"),
    [
        (lambda b: b.replace(b"RGV^O15^RGV_O15", b"ORU^R01^ORU_R01"), "MSH^1^9", "RGV^O15"),
        (lambda b: b.replace(b"ORC|NW|ORD-1|", b"ORC|NW||"), "ORC^1^2", "placer order number"),
        (lambda b: b.replace(b"|0.06|", b"|0,06|"), "RXG^1^15", "'0,06' is not a decimal"),
        (lambda b: b.replace(b"|0.06|", b"|1e3|"), "RXG^1^15", "'1e3' is not a decimal"),
        (lambda b: b.replace(b"|4|ug/mL", b"||ug/mL"), "RXG^1^17", "concentration"),
        (lambda b: b.replace(b"|||||||pump-1", b"|||||||"), "OBX^1^18", "target pump"),
        (lambda b: b.replace(b"\rORC|", b"\rXXX|"), "ORC^1", "ORC segment missing"),
        (
            lambda b: b.replace(b"RXG|1|||^norepinephrine", b"RXG|1|||^" + b"n" * 65),
            "RXG^1^4",
            "limit 64",
        ),
    ],
)
def test_malformed_orders_name_the_field(mangle: Any, location: str, words: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_rgv(mangle(rgv()))
    assert caught.value.location == location
    assert words in caught.value.text


def test_order_for_the_running_infusion_is_a_titration_else_a_new_program() -> None:
    """Same drug and concentration on an infusing pump: set_dose; otherwise program."""
    order = parse_rgv(rgv())
    titration = order_command(order, PROGRAM, now=NOW)
    assert titration["action"] == "set_dose"
    assert titration["dose"] == {"value": 0.06, "unit": "ug/kg/min"}
    assert titration["id"] == "piv-ORD-1"
    assert titration["by"] == {"clinician": "dr-2"}
    stopped = order_command(order, replace(PROGRAM, infusing=False), now=NOW)
    assert stopped["action"] == "program"
    assert stopped["program"]["vtbi"] == {"value": 250.0, "unit": "mL"}
    assert stopped["program"]["profile"] == "adult-icu"
    other = order_command(parse_rgv(rgv(concentration=("8", "ug/mL"))), PROGRAM, now=NOW)
    assert other["action"] == "program"
    weird = order_command(parse_rgv(rgv(order_id="A B/7")), PROGRAM, now=NOW)
    assert weird["id"] == "piv-A_B_7"


def test_gate_answers_map_to_msa_codes() -> None:
    reject = {
        "phase": "rejected",
        "verdict": {"findings": [{"rule": "HARD_MAX", "severity": "reject"}]},
    }

    def code(data: dict[str, Any]) -> tuple[AckCode, str]:
        return answer_code(CommandResult.from_json(data))

    assert code(reject) == (AckCode.AR, "rejected by the drug library: HARD_MAX")
    assert code({"phase": "needs_confirmation"}) == (AckCode.AA, "")
    refused = {"phase": "rejected", "error": {"code": "not_authorized", "message": "dr-x"}}
    assert code(refused) == (AckCode.AE, "not_authorized: dr-x")
    again = {"phase": "duplicate", "first": {"phase": "needs_confirmation"}}
    assert code(again)[0] is AckCode.AA


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    async def __call__(self, pump: str, command: dict[str, Any], order: str) -> CommandResult:
        self.calls.append((pump, command, order))
        return CommandResult.from_json({"phase": "needs_confirmation", "id": command["id"]})


@pytest_asyncio.fixture
async def listener() -> AsyncIterator[tuple[PivListener, Recorder]]:
    recorder = Recorder()
    server = PivListener(
        host="127.0.0.1",
        port=0,
        submit=recorder,
        program_of=lambda pid: PROGRAM if pid == "pump-1" else None,
        clock=lambda: NOW,
        max_frame=4096,
        idle_timeout_s=0.3,
        max_connections=2,
    )
    await server.start()
    yield server, recorder
    await server.close()


@pytest.mark.asyncio
async def test_listener_answers_rrg_o16_and_submits_only_good_orders(
    listener: tuple[PivListener, Recorder],
) -> None:
    """AA for a good order (submitted once); AE naming the field for a bad one; AE for an
    unknown pump; every answer is a valid v2.6 RRG^O16 whose MSA-2 is the order's MSH-10."""
    server, recorder = listener
    code, _, raw = await send_order("127.0.0.1", server.port, rgv())
    assert code is AckCode.AA
    bad_code, text, bad_raw = await send_order(
        "127.0.0.1", server.port, rgv(control_id="o-2").replace(b"|0.06|", b"|x|")
    )
    assert bad_code is AckCode.AE
    assert "RXG-15" in text
    unknown, why, _ = await send_order("127.0.0.1", server.port, rgv(pump_id="pump-9"))
    assert unknown is AckCode.AE
    assert "pump-9" in why
    assert [c[0] for c in recorder.calls] == ["pump-1"]
    for answer, control_id in ((raw, "o-1"), (bad_raw, "o-2")):
        assert parse_ack(answer).control_id == control_id
        message = parse_message(
            answer.decode().rstrip("\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        assert message.validate()


@pytest.mark.asyncio
async def test_listener_drops_oversize_frames_then_reads_the_next(
    listener: tuple[PivListener, Recorder],
) -> None:
    """A frame over the cap is skipped (never buffered whole); the next order is answered."""
    server, recorder = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x0b" + b"A" * 10_000 + b"\x1c\r" + MllpFrame(rgv()).serialize())
    await writer.drain()
    decoder = MllpDecoder()
    async with asyncio.timeout(5):
        frames: list[MllpFrame] = []
        while not frames:
            frames = [f for f in decoder.feed(await reader.read(4096)) if isinstance(f, MllpFrame)]
    assert parse_ack(frames[0].payload).code is AckCode.AA
    assert len(recorder.calls) == 1
    writer.close()


@pytest.mark.asyncio
async def test_idle_peers_are_closed_and_connections_are_limited(
    listener: tuple[PivListener, Recorder],
) -> None:
    """A peer that sends nothing more is closed after the idle timeout; a connection beyond the
    limit is closed at once."""
    server, _ = listener
    peers = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    for n, (reader, writer) in enumerate(peers):  # an answered order: the server holds both
        writer.write(MllpFrame(rgv(control_id=f"p-{n}")).serialize())
        decoder = MllpDecoder()
        async with asyncio.timeout(2):
            while not [
                f for f in decoder.feed(await reader.read(4096)) if isinstance(f, MllpFrame)
            ]:
                pass
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
    async with asyncio.timeout(2):
        assert await extra_reader.read(1) == b""  # closed: over the limit
    async with asyncio.timeout(2):
        for reader, _ in peers:
            assert await reader.read(1) == b""  # closed: idle
    for _, writer in [*peers, (extra_reader, extra_writer)]:
        writer.close()
