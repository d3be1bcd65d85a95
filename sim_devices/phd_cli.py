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

A terminal on the other end (``socat - TCP:127.0.0.1:7010,crlf``) talks to it as to the pump:
type ``ver`` or ``irat 9 ml/hr`` and Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from decimal import Decimal, InvalidOperation

import structlog

from protocol.errors import InfusiondError
from sim_devices.phd_pump import Fault, PhdPumpModel, PumpSetup, refusal_text
from sim_devices.phd_server import PhdSimulator

log = structlog.get_logger("sim.phd")
DEFAULT_LISTEN = "tcp://127.0.0.1:7010"
EVENTS = ("stall", "reset", "panel-rate")


class FaultSpecError(InfusiondError):
    """A ``--faults`` entry is wrong; the message names it and the problem."""


def _setups(args: argparse.Namespace) -> list[PumpSetup]:
    first = int(args.address)
    count = int(args.pumps)
    if not 0 <= first <= 99 or not 1 <= count <= 100 - first:
        raise SystemExit(f"infusiond sim phd: addresses {first}..{first + count - 1} not in 0..99")
    try:
        return [
            PumpSetup(
                address=first + i,
                diameter_mm=Decimal(args.diameter),
                rate_ml_h=Decimal(args.rate),
                running=bool(args.running),
                target_ml=Decimal(args.target_volume),
            )
            for i in range(count)
        ]
    except InvalidOperation:
        raise SystemExit(
            "infusiond sim phd: --diameter, --rate and --target-volume take numbers"
        ) from None


def apply_fault_spec(sim: PhdSimulator, spec: str) -> None:
    """Apply one ``--faults`` entry (see the module doc)."""
    body, _, addr = spec.partition("@")
    body, _, on = body.partition("/")
    name, _, value = body.partition("=")
    try:
        address = int(addr) if addr else 0
    except ValueError:
        raise FaultSpecError(f"fault {spec!r}: address {addr!r} is not a number") from None
    pump = sim.pumps.get(address)
    if pump is None:
        raise FaultSpecError(f"fault {spec!r}: no simulated pump at address {address}")
    if name in EVENTS:
        _event(pump, name, value, spec)
        return
    try:
        fault = Fault(name)
    except ValueError:
        known = ", ".join([*EVENTS, *(f.value for f in Fault)])
        raise FaultSpecError(f"fault {spec!r}: unknown fault {name!r} (known: {known})") from None
    if value and fault not in (Fault.SLOW, Fault.REJECT, Fault.REFUSE_BUT_APPLY):
        raise FaultSpecError(f"fault {spec!r}: {name} takes no value")
    try:
        if fault is Fault.SLOW:
            pump.reply_delay_s = float(value or "1.0")
        elif fault in (Fault.REJECT, Fault.REFUSE_BUT_APPLY):
            pump.reject_with = refusal_text(value or "Out of range")
        pump.inject(fault, None, on=on or None)
    except ValueError as exc:
        raise FaultSpecError(f"fault {spec!r}: {exc}") from None


def _event(pump: PhdPumpModel, name: str, value: str, spec: str) -> None:
    if name == "stall":
        pump.stall()
    elif name == "reset":
        pump.power_reset()
    else:
        try:
            pump.front_panel_rate(Decimal(value))
        except InvalidOperation:
            raise FaultSpecError(f"fault {spec!r}: panel-rate takes mL/h") from None


async def serve(args: argparse.Namespace) -> int:
    if args.scenario:
        raise SystemExit("infusiond sim phd: --scenario is not supported; use --faults")
    sim = PhdSimulator(
        _setups(args),
        speed=args.speed,
        baudrate=int(args.baud),
        emulate_wire_time=args.emulate_wire,
    )
    try:
        for spec in args.faults:
            for item in spec.split(","):
                if item:
                    apply_fault_spec(sim, item)
    except FaultSpecError as exc:
        raise SystemExit(f"infusiond sim phd: {exc}") from None
    listen = args.serial or args.listen or DEFAULT_LISTEN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim.serving(listen):
        await stop.wait()
    log.info("phd simulator stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``daemon.cli``."""
    return asyncio.run(serve(args))
