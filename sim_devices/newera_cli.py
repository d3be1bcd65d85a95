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
import sys
from decimal import Decimal

from sim_devices.newera_pump import NewEraPumpSetup
from sim_devices.newera_scenario import apply_fault_spec, check, play, setups
from sim_devices.newera_server import NewEraSimulator
from sim_devices.scenario import Scenario, ScenarioError, load_scenario
from sim_devices.serial_cli import apply_fault_specs, chain_addresses, serve_until_signal

DEFAULT_LISTEN = "tcp://127.0.0.1:7000"


def _setups(args: argparse.Namespace) -> list[NewEraPumpSetup]:
    first = int(getattr(args, "address", 0) or 0)
    count = int(getattr(args, "pumps", 1) or 1)
    return [
        NewEraPumpSetup(
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
    origin = str(args.scenario)
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario(name="none")
        sim = NewEraSimulator(
            setups(scenario, origin) or _setups(args),
            speed=args.speed,
            baudrate=int(getattr(args, "baud", 19200) or 19200),
            emulate_wire_time=bool(getattr(args, "emulate_wire", False)),
        )
        check(sim, scenario, origin)
        apply_fault_specs(args.faults, functools.partial(apply_fault_spec, sim))
    except ScenarioError as exc:
        sys.stderr.write(f"infusiond sim newera: {exc}\n")
        return 2
    listen = args.serial or args.listen or DEFAULT_LISTEN
    await serve_until_signal(
        "newera", sim.serving(listen), functools.partial(play, sim, scenario, origin)
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``daemon.cli``."""
    return asyncio.run(serve(args))
