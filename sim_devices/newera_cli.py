"""``infusiond sim newera``: run the New Era simulator until interrupted.

Examples::

    infusiond sim newera --listen tcp://127.0.0.1:7000 --rate 9.0 --running
    infusiond sim newera --serial /tmp/tty-a --pumps 2 --faults slow=1.5@1
    infusiond sim newera --listen tcp://127.0.0.1:7000 --scenario newera-stall.toml --speed 60

A terminal on the other end (``socat - TCP:127.0.0.1:7000,crlf`` or a serial terminal on the
other pty) talks to it as to the pump: type ``VER`` or ``00RAT 9 MH`` and Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from decimal import Decimal
from pathlib import Path

import structlog

from sim_devices.newera_pump import PumpSetup
from sim_devices.newera_scenario import Event, apply_fault_spec, check_events, load_scenario, play
from sim_devices.newera_server import NewEraSimulator

log = structlog.get_logger("sim.newera")
DEFAULT_LISTEN = "tcp://127.0.0.1:7000"


def _setups(args: argparse.Namespace) -> list[PumpSetup]:
    first = int(getattr(args, "address", 0) or 0)
    count = int(getattr(args, "pumps", 1) or 1)
    if not 0 <= first <= 99 or not 1 <= count <= 100 - first:
        raise SystemExit(
            f"infusiond sim newera: addresses {first}..{first + count - 1} not in 0..99"
        )
    return [
        PumpSetup(
            address=first + i,
            diameter_mm=Decimal(str(getattr(args, "diameter", "26.59"))),
            rate_ml_h=Decimal(str(getattr(args, "rate", "0"))),
            running=bool(getattr(args, "running", False)),
            vtbi_ml=Decimal(str(getattr(args, "vtbi", "0"))),
            reset_alarm=not getattr(args, "no_reset_alarm", False),
        )
        for i in range(count)
    ]


async def serve(args: argparse.Namespace) -> int:
    setups = _setups(args)
    events: list[Event] = []
    if args.scenario:
        scenario_pumps, events = load_scenario(Path(args.scenario))
        setups = scenario_pumps or setups
    sim = NewEraSimulator(
        setups,
        speed=args.speed,
        baudrate=int(getattr(args, "baud", 19200) or 19200),
        emulate_wire_time=bool(getattr(args, "emulate_wire", False)),
    )
    check_events(sim, events, str(args.scenario))
    for spec in args.faults:
        for item in spec.split(","):
            if item:
                apply_fault_spec(sim, item)
    listen = args.serial or args.listen or DEFAULT_LISTEN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim.serving(listen):
        player = asyncio.create_task(play(sim, events, str(args.scenario)), name="newera-scenario")
        waiter = asyncio.create_task(stop.wait(), name="newera-sim-stop")
        try:
            await asyncio.wait({player, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if player.done() and (exc := player.exception()) is not None:
                raise exc
            await waiter
        finally:
            for task in (player, waiter):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    log.info("newera simulator stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``daemon.cli``."""
    return asyncio.run(serve(args))
