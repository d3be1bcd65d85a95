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
import functools
from decimal import Decimal
from pathlib import Path

from sim_devices.newera_pump import PumpSetup
from sim_devices.newera_scenario import Event, apply_fault_spec, check_events, load_scenario, play
from sim_devices.newera_server import NewEraSimulator
from sim_devices.serial_cli import apply_fault_specs, chain_addresses, serve_until_signal

DEFAULT_LISTEN = "tcp://127.0.0.1:7000"


def _setups(args: argparse.Namespace) -> list[PumpSetup]:
    first = int(getattr(args, "address", 0) or 0)
    count = int(getattr(args, "pumps", 1) or 1)
    return [
        PumpSetup(
            address=address,
            diameter_mm=Decimal(str(getattr(args, "diameter", "26.59"))),
            rate_ml_h=Decimal(str(getattr(args, "rate", "0"))),
            running=bool(getattr(args, "running", False)),
            vtbi_ml=Decimal(str(getattr(args, "vtbi", "0"))),
            reset_alarm=not getattr(args, "no_reset_alarm", False),
        )
        for address in chain_addresses("newera", first, count)
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
    apply_fault_specs(args.faults, functools.partial(apply_fault_spec, sim))
    listen = args.serial or args.listen or DEFAULT_LISTEN
    await serve_until_signal(
        "newera", sim.serving(listen), functools.partial(play, sim, events, str(args.scenario))
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``daemon.cli``."""
    return asyncio.run(serve(args))
