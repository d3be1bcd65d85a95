"""``infusiond sim phd``: run the PHD ULTRA pump-chain simulator until interrupted.

Examples::

    infusiond sim phd --listen tcp://127.0.0.1:7010 --rate 9 --running
    infusiond sim phd --serial /tmp/tty-a --pumps 3 --faults slow=1.5@1 stall@2
    infusiond sim phd --listen tcp://127.0.0.1:7010 --speed 60 --faults refuse-but-apply=OOR/irate

Fault spec (``--faults``): ``NAME[=VALUE][/COMMAND][@ADDRESS]``. ``stall``, ``reset`` (power
reset) and ``panel-rate=ML_H`` (a front-panel rate change) happen once at start; the reply faults
(``silence``, ``drop-reply``, ``garble``, ``truncate``, ``wrong-address``, ``overlong``,
``slow=SECONDS``, ``reject=TEXT``, ``refuse-but-apply=TEXT``, ``hang-up``, ``noise``) stay
armed. ``TEXT`` is one of the pump's error lines (``OOR``, ``NA``, ``?``, ``Out of range`` ...).
``/COMMAND`` limits a fault to that command sent as a write (``/irate``: rate changes).
``--scenario FILE`` plays timed events (:mod:`sim_devices.scenario`, docs/biomed-guide.md).

A terminal on the other end (``socat - TCP:127.0.0.1:7010,crlf``) talks to it as to the pump:
type ``ver`` or ``irat 9 ml/hr`` and Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from decimal import Decimal, InvalidOperation

from sim_devices.phd_pump import PhdPumpSetup
from sim_devices.phd_scenario import EVENTS, apply_fault_spec, check, play, setups
from sim_devices.phd_server import PhdSimulator
from sim_devices.scenario import Scenario, ScenarioError, load_scenario
from sim_devices.serial_cli import apply_fault_specs, chain_addresses, serve_until_signal

DEFAULT_LISTEN = "tcp://127.0.0.1:7010"


def _setups(args: argparse.Namespace) -> list[PhdPumpSetup]:
    first = int(args.address)
    count = int(args.pumps)
    addresses = chain_addresses("phd", first, count)
    try:
        return [
            PhdPumpSetup(
                address=address,
                diameter_mm=Decimal(args.diameter),
                rate_ml_h=Decimal(args.rate),
                running=bool(args.running),
                target_ml=Decimal(args.target_volume),
            )
            for address in addresses
        ]
    except InvalidOperation:
        raise SystemExit(
            "infusiond sim phd: --diameter, --rate and --target-volume take numbers"
        ) from None


async def serve(args: argparse.Namespace) -> int:
    origin = str(args.scenario)
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario(name="none")
        sim = PhdSimulator(
            setups(scenario, origin) or _setups(args),
            speed=args.speed,
            baudrate=int(args.baud),
            emulate_wire_time=args.emulate_wire,
        )
        check(sim, scenario, origin)
        apply_fault_specs(args.faults, functools.partial(apply_fault_spec, sim))
    except ScenarioError as exc:
        sys.stderr.write(f"infusiond sim phd: {exc}\n")
        return 2
    listen = args.serial or args.listen or DEFAULT_LISTEN
    await serve_until_signal(
        "phd", sim.serving(listen), functools.partial(play, sim, scenario, origin)
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``daemon.cli``."""
    return asyncio.run(serve(args))


__all__ = ["EVENTS", "run", "serve"]
