"""Simulated monitor -> MLLP listener -> daemon vitals state, end to end over loopback TCP."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime

import pytest

from daemon.core.vitals import VitalsState
from drivers.backoff import Backoff
from drivers.hl7 import (
    AckCode,
    Parameter,
    ReceiverConfig,
    VitalsClient,
    VitalsListener,
    VitalsSample,
)
from sim_devices.clock import SimClock
from sim_devices.monitor import AckResult, Monitor, MonitorFault
from sim_devices.patient_model import Doses
from sim_devices.scenario import load_scenario

DEMO = Doses(0.05, 0.03)


def _monitor(results: asyncio.Queue[AckResult], **kwargs: object) -> Monitor:
    return Monitor(
        load_scenario("demo").model(seed=4),
        dose_source=lambda: DEMO,
        bed="bed-1",
        clock=SimClock(speed=60),
        interval_s=0.01,
        backoff=Backoff(initial_s=0.01, maximum_s=0.05),
        on_ack=results.put_nowait,
        **kwargs,  # type: ignore[arg-type]
    )


async def _take(results: asyncio.Queue[AckResult], n: int) -> list[AckResult]:
    return [await asyncio.wait_for(results.get(), 5) for _ in range(n)]


@pytest.mark.asyncio
async def test_monitor_feeds_the_listener_and_map_is_in_the_demo_range() -> None:
    """Every message is AA'd; the daemon's vitals state shows all five values, MAP 65-85."""
    state = VitalsState("bed-1")
    samples: list[VitalsSample] = []

    def on_sample(sample: VitalsSample) -> None:
        samples.append(sample)
        state.update(sample)

    results: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(results)
    async with (
        VitalsListener(ReceiverConfig(on_sample=on_sample), port=0) as listener,
        asyncio.TaskGroup() as tg,
    ):
        task = tg.create_task(monitor.run(listener.url), name="monitor")
        got = await _take(results, 10)
        task.cancel()
    assert all(r.as_expected and r.ack.code is AckCode.AA for r in got)
    assert [s.control_id for s in samples] == [r.control_id for r in got]
    snapshot = state.snapshot(datetime.now(UTC))
    assert 65 <= snapshot["map"]["value"] <= 85
    assert snapshot["sbp"]["value"] > snapshot["map"]["value"] > snapshot["dbp"]["value"]
    assert {k for k, v in snapshot.items() if v is None} == set()
    assert snapshot["source"] == "hl7:INFUSIOND-SIM"
    assert monitor.stats.unexpected == monitor.stats.ack_mismatch == 0


@pytest.mark.asyncio
async def test_faults_get_the_expected_acks_and_the_stream_recovers() -> None:
    """garbled/missing-obx/future-timestamps -> AE naming the problem and nothing applied;
    stale -> AA but stale; truncated and drop-connection are survived and followed by AA on
    the (new) connection."""
    state = VitalsState("bed-1")
    results: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(
        results,
        faults=[
            MonitorFault.GARBLED,
            MonitorFault.MISSING_OBX,
            MonitorFault.FUTURE_TIMESTAMPS,
            MonitorFault.TRUNCATED,
            MonitorFault.STALE_TIMESTAMPS,
            MonitorFault.DROP_CONNECTION,
        ],
    )
    config = ReceiverConfig(on_sample=state.update)
    async with VitalsListener(config, port=0) as listener, asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(listener.url), name="monitor")
        garbled, missing, future = await _take(results, 3)
        assert state.latest(Parameter.MAP) is None  # nothing of the three was applied
        (stale,) = await _take(results, 1)
        assert state.snapshot(datetime.now(UTC))["map"]["stale"] is True
        after_drop = await _take(results, 2)
        task.cancel()
    assert (garbled.ack.code, garbled.fault) == (AckCode.AE, MonitorFault.GARBLED)
    assert "value '7#?4' of MAP is not numeric" in garbled.ack.text
    assert missing.ack.code is AckCode.AE
    assert "no OBX segment" in missing.ack.text
    assert (future.ack.code, future.ack.location) == (AckCode.AE, "OBX^1^14")
    skew = re.search(
        r"of MAP is ([0-9.]+) s ahead of the gateway clock \(limit 60 s\)", future.ack.text
    )
    assert skew is not None, future.ack.text
    assert 299 < float(skew.group(1)) <= 300  # 5 min ahead of the monitor's clock at sending
    assert (stale.ack.code, stale.fault) == (AckCode.AA, MonitorFault.STALE_TIMESTAMPS)
    assert all(r.ack.code is AckCode.AA and r.fault is None for r in after_drop)
    assert all(r.as_expected for r in (garbled, missing, future, stale, *after_drop))
    assert monitor.stats.connections == 2
    assert listener.stats.discarded_bytes > 0  # the truncated half frame
    assert "stale" not in state.snapshot(datetime.now(UTC))["map"]


@pytest.mark.asyncio
async def test_monitor_in_server_mode_serves_a_daemon_in_client_mode() -> None:
    """--listen: the daemon's VitalsClient dials the monitor and receives its vitals."""
    results: asyncio.Queue[AckResult] = asyncio.Queue()
    samples: asyncio.Queue[VitalsSample] = asyncio.Queue()
    monitor = _monitor(results, coding="LN")
    async with asyncio.TaskGroup() as tg:
        serve = tg.create_task(monitor.serve("tcp://127.0.0.1:0"), name="monitor-serve")
        await asyncio.wait_for(monitor.listening.wait(), 5)
        assert monitor.port is not None
        client = VitalsClient(
            ReceiverConfig(on_sample=samples.put_nowait), host="127.0.0.1", port=monitor.port
        )
        receive = tg.create_task(client.run(), name="vitals-client")
        got = await _take(results, 3)
        sample = await asyncio.wait_for(samples.get(), 5)
        receive.cancel()
        serve.cancel()
    assert all(r.ack.code is AckCode.AA for r in got)
    assert set(sample.observations) == set(Parameter)
    assert all(o.code.startswith("LN:") for o in sample.observations.values())


@pytest.mark.asyncio
async def test_monitor_reconnects_when_the_listener_comes_back() -> None:
    """With no listener the monitor backs off; once one appears it connects and is AA'd."""
    results: asyncio.Queue[AckResult] = asyncio.Queue()
    monitor = _monitor(results)
    probe = VitalsListener(ReceiverConfig(on_sample=lambda s: None), port=0)
    await probe.start()
    port = probe.port
    await probe.close()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(f"tcp://127.0.0.1:{port}"), name="monitor")
        while monitor.backoff.attempts < 2:  # no event exists for a refused connect
            await asyncio.sleep(0.01)
        async with VitalsListener(ReceiverConfig(on_sample=lambda s: None), port=port):
            (result,) = await _take(results, 1)
        task.cancel()
    assert result.ack.code is AckCode.AA


@pytest.mark.asyncio
async def test_sim_monitor_cli_sends_and_checks_acks() -> None:
    """`infusiond sim monitor --to URL --count 3 --faults garbled` exits 0: ACKs as expected."""
    samples: list[VitalsSample] = []
    async with VitalsListener(ReceiverConfig(on_sample=samples.append), port=0) as listener:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "sim", "monitor", "--to", listener.url,
            "--count", "3", "--interval", "0.05", "--faults", "garbled",
            "--scenario", "hypertensive-overshoot", "--bed", "bed-9",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert listener.stats.errors == 1
    assert len(samples) == 2
    assert all(s.bed == "bed-9" for s in samples)
    assert b"monitor.ack" in out


@pytest.mark.asyncio
async def test_sim_monitor_cli_takes_faults_on_stdin_at_run_time() -> None:
    """--interactive: a fault name typed while running makes the next message get an AE."""
    async with VitalsListener(ReceiverConfig(on_sample=lambda s: None), port=0) as listener:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "sim", "monitor", "--to", listener.url,
            "--interval", "0.05", "--interactive",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while b"monitor.ack" not in await proc.stdout.readline():
                    pass
                proc.stdin.write(b"bogus\nmissing-obx\n")
                await proc.stdin.drain()
                seen = b""
                while b"ack=AE" not in seen:
                    line = await proc.stdout.readline()
                    assert line, "monitor exited"
                    seen += line
        finally:
            proc.terminate()
            await proc.wait()
    assert b"unknown monitor fault 'bogus'" in seen
    assert b"no OBX segment" in seen
    assert listener.stats.errors == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--faults", "meteor"], "unknown monitor fault 'meteor'"),
        (["--serial", "/dev/ttyS0"], "runs over TCP"),
        (["--interval", "0"], "interval_s must be > 0"),
    ],
)
def test_sim_monitor_cli_rejects_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad options exit 2 with a message naming the problem."""
    from daemon.cli import main  # noqa: PLC0415 - the CLI is under test here

    assert main(["sim", "monitor", *argv]) == 2
    assert message in capsys.readouterr().err
