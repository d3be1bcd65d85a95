"""End-to-end fuzzing of the command path: mutated commands (bit flips, truncations, spliced
garbage, random JSON values in random fields) published through a real mosquitto to a real
gateway. The parser's own property tests live in tests/daemon/test_command_parse.py; this
adds what they cannot show: every payload gets an answer, the process keeps serving, and only
mutants that are still valid commands are accepted (sent to the pump)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from daemon.mqtt.command_parse import Command, parse_command
from drivers.clock import utc_now
from tests.reliability.harness import bedside, command, probe, running_gateway, simulators
from tests.support.procs import Mosquitto

FIRST_PHASES = {"rejected", "accepted", "duplicate", "needs_confirmation"}
SEED = 20261126
CASES = 120
JUNK: list[Any] = [None, True, -1, 0, 1e308, "", "x" * 70, [], {}, [[[[[]]]]], {"a": {"b": {}}}]


def mutate(rng: random.Random, index: int) -> bytes:
    body = command(cid=f"fz-{index}", action=rng.choice(["set_rate", "stop", "pause", "start"]))
    if body["action"] != "set_rate":
        body.pop("rate", None)
    how = rng.randrange(5)
    if how == 0:  # a random field gets a random value
        key = rng.choice([*body, "rate", "dose", "program", "confirm", "extra"])
        body[key] = rng.choice(JUNK)
        return json.dumps(body).encode()
    raw = bytearray(json.dumps(body).encode())
    if how == 1:  # bit flips
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(raw))
            raw[pos] ^= 1 << rng.randrange(8)
    elif how == 2:  # truncation
        del raw[rng.randrange(1, len(raw)) :]
    elif how == 3:  # spliced garbage
        pos = rng.randrange(len(raw))
        raw[pos:pos] = rng.randbytes(rng.randint(1, 32))
    else:  # repeated key or deep nesting prefix
        raw = (
            bytearray(b'{"id":"fz-%d","id":' % index) + raw[1:]
            if rng.random() < 0.5
            else (bytearray(b"[" * rng.randint(10, 3000)) + raw)
        )
    return bytes(raw)


@pytest.mark.asyncio
async def test_every_mutated_command_gets_one_answer_and_the_gateway_keeps_serving(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            for index in range(CASES):
                payload = mutate(rng, index)
                mark = len(p.messages)
                await p.send("pump-1", payload)
                answer = await p.wait_for(
                    lambda m: (
                        m.topic.endswith("pump-1/command/result")
                        and m.data["phase"] in FIRST_PHASES
                    ),
                    after=mark,
                )
                data = answer.data
                if data["phase"] == "rejected" and "error" in data:
                    assert data["error"]["message"], (payload, data)
                if data["phase"] == "accepted":  # only what still parses reaches the pump
                    assert isinstance(parse_command(payload, now=utc_now()), Command), payload
            # still healthy: a clean command is judged (the fuzz may have stopped the pump, so
            # the verdict may differ) and the pump is still polled
            good = command()
            await p.send("pump-1", good)
            judged = await p.result(good["id"])
            assert "error" not in judged, judged
            assert gateway.channels["pump-1"].connection.value == "online"
            assert gateway.bridge.stats.connections == 1
