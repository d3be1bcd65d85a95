"""``infusiond sim monitor``: the simulated patient monitor as a command-line tool.

``--to tcp://HOST:PORT`` (default ``tcp://127.0.0.1:2575``) connects to a gateway's MLLP
listener (the daemon's default mode, ``[[vitals]] listen``); ``--listen tcp://HOST:PORT`` makes the
monitor a server that a gateway in client mode dials. ``--scenario`` takes a file or a shipped
name (``demo``, ``septic-shock-refractory``, ``hypertensive-overshoot``); without pump
simulators the scenario's dose schedule drives the patient. ``--faults`` are applied to the
first messages, in order; with ``--interactive`` each line typed on stdin (a fault name) is
applied to the next message at run time. ``--count N`` stops after N acknowledged messages
and exits 1 if any ACK was not the one expected (AA, or AE for a garbled, OBX-less or
future-stamped message).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from sim_devices.clock import SimClock
from sim_devices.monitor import AckResult, Monitor, MonitorFault
from sim_devices.scenario import ScenarioError, load_scenario

DEFAULT_TO = "tcp://127.0.0.1:2575"

log = structlog.get_logger(__name__)


def _faults(names: list[str]) -> list[MonitorFault]:
    return [MonitorFault.parse(name) for name in names]


async def _read_faults(monitor: Monitor) -> None:
    """``--interactive``: each line on stdin names a fault to apply to the next message."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                log.warning("monitor.stdin_line_too_long", limit=1024)
                continue
            if not line:
                return
            name = line.decode(errors="replace").strip()
            if not name:
                continue
            try:
                monitor.inject(MonitorFault.parse(name))
            except ValueError as exc:
                log.warning("monitor.bad_fault", error=str(exc))
            else:
                log.info("monitor.fault_queued", fault=name)
    finally:
        transport.close()


async def _main(monitor: Monitor, args: argparse.Namespace) -> None:
    done = asyncio.Event()
    acked = 0

    def on_ack(_result: AckResult) -> None:
        nonlocal acked
        acked += 1
        if args.count is not None and acked >= args.count:
            done.set()

    monitor.on_ack = on_ack
    async with asyncio.TaskGroup() as tg:
        if args.listen:
            task = tg.create_task(monitor.serve(args.listen), name="monitor-serve")
        else:
            task = tg.create_task(monitor.run(args.to or DEFAULT_TO), name="monitor-run")
        stdin = (
            tg.create_task(_read_faults(monitor), name="monitor-stdin")
            if args.interactive
            else None
        )
        await done.wait()
        task.cancel()
        if stdin is not None:
            stdin.cancel()


def _build(args: argparse.Namespace) -> Monitor:
    """The monitor the options describe; ValueError names a bad option."""
    if args.count is not None and args.count < 1:
        raise ValueError("--count must be >= 1")
    faults = _faults(args.faults)
    scenario = load_scenario(args.scenario or "demo")
    scheduled = scenario.monitor_faults()
    clock = SimClock(speed=args.speed)
    return Monitor(
        scenario.model(seed=args.seed),
        dose_source=lambda: scenario.doses_at(clock.now()),
        bed=args.bed,
        clock=clock,
        interval_s=args.interval,
        coding=args.coding,
        faults=faults,
        scheduled_faults=scheduled,
    )


def run(args: argparse.Namespace) -> int:
    """Run the simulated monitor until Ctrl-C (or ``--count`` messages)."""
    if args.serial:
        sys.stderr.write("infusiond sim monitor: HL7/MLLP runs over TCP; use --to or --listen\n")
        return 2
    try:
        monitor = _build(args)
    except (ValueError, ScenarioError) as exc:
        sys.stderr.write(f"infusiond sim monitor: {exc}\n")
        return 2
    asyncio.run(_main(monitor, args))
    stats = monitor.stats
    ok = stats.unexpected == 0 and stats.ack_mismatch == 0 and stats.no_ack == 0
    return 0 if ok else 1
