"""A frozen broker: mosquitto SIGSTOPped for 15 s (its sockets stay open, nothing is answered,
so every PUBACK and CONNACK wait times out) while the daemon runs as a real process and keeps
publishing pump state. The daemon must not exit because of its peer: it drops the dead
connection, retries with backoff, and once the broker runs again (SIGCONT) it is online with
its retained bridge/state and pump states republished, and it obeys a command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability.harness import (
    NE_RATE_UP,
    ROOT,
    bedside,
    command,
    daemon_process,
    probe,
    pumps_online,
    simulators,
    write_toml,
)
from tests.support.procs import Mosquitto

FREEZE_S = 15.0
BACK_WITHIN_S = 45.0  # the PUBACK/CONNACK timeout (10 s) plus capped backoff, with margin


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_broker_frozen_for_15_s_does_not_end_the_daemon_and_it_comes_back_online(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """SIGSTOP the broker for 15 s: the daemon is still running (it saw the link fail and
    logged it, with no traceback); after SIGCONT a new subscriber gets bridge/state online
    (retained) and pump states stamped after the freeze, and a set_rate is applied."""
    async with simulators() as bench:
        cfg = bedside(bench, broker_url=mosquitto.url, data_dir=tmp_path / "data")
        config = write_toml(tmp_path / "infusiond.toml", cfg)
        with daemon_process(config, tmp_path / "daemon.log") as daemon:
            async with probe(mosquitto.url) as before:
                await before.wait_for(
                    lambda m: m.topic == f"{ROOT}/bridge/state" and m.json == {"state": "online"}
                )
                await pumps_online(before)
            with frozen(mosquitto):
                await asyncio.sleep(FREEZE_S)  # the fault lasts this long: not a synchronisation
            resumed = datetime.now(UTC)
            assert daemon.proc is not None
            assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
            assert "mqtt connection lost or refused" in daemon.log_text()

            deadline = time.monotonic() + BACK_WITHIN_S
            while True:  # stale connection attempts may bounce the session once: eventually
                async with probe(mosquitto.url) as after:
                    state = await after.wait_for(
                        lambda m: m.topic == f"{ROOT}/bridge/state", timeout=BACK_WITHIN_S
                    )
                    if state.json == {"state": "online"}:
                        break
                    await after.wait_for(
                        lambda m: (
                            m.topic == f"{ROOT}/bridge/state" and m.json == {"state": "online"}
                        ),
                        timeout=max(0.1, deadline - time.monotonic()),
                    )
                assert time.monotonic() < deadline, "bridge/state never came back online"
            async with probe(mosquitto.url) as after:
                state = await after.wait_for(lambda m: m.topic == f"{ROOT}/bridge/state")
                assert state.retain
                assert state.json == {"state": "online"}
                for pump in ("pump-1", "pump-2"):
                    fresh = await after.wait_for(
                        lambda m, pump=pump: (
                            m.topic == f"{ROOT}/pump/{pump}/state"
                            and datetime.fromisoformat(m.json["ts"]) > resumed
                        ),
                        timeout=BACK_WITHIN_S,
                    )
                    assert fresh.json["data"]["connection"] == "online"
                good = command()
                await after.send("pump-1", good)
                applied = await after.result(good["id"], "applied")
                assert applied["readback"]["rate"]["value"] == float(NE_RATE_UP)
            assert daemon.proc.poll() is None
            log = daemon.log_text()
            assert "Traceback" not in log
            assert "ExceptionGroup" not in log
