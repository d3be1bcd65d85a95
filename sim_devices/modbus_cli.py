"""``infusiond sim modbus``: serve simulated pumps over Modbus TCP or RTU until interrupted.

Examples::

    infusiond sim modbus --listen tcp://127.0.0.1:5020 --status infusing --rate 52.5
    infusiond sim modbus --serial /dev/pts/7 --pumps 3 --faults 2:occlusion
    infusiond sim modbus --scenario sim_devices/scenarios/modbus-occlusion.toml --speed 10

It prints what it serves (URL, unit ids, map) on stdout and logs every register write
(structlog, on stderr). Faults: ``[UNIT:]NAME[=ARG]``, several per flag or comma-separated.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from decimal import Decimal, InvalidOperation

import structlog

from sim_devices.modbus_pump import FaultSpec, PumpConfig
from sim_devices.modbus_scenario import Scenario, ScenarioError, load_scenario, play
from sim_devices.modbus_server import ModbusPumpSimulator

DEFAULT_LISTEN = "tcp://127.0.0.1:5020"
EXIT_OK, EXIT_USAGE = 0, 2


class UsageError(ValueError):
    """A command-line value is wrong; the message names the option."""


def _decimal(option: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"{option}: {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise UsageError(f"{option}: {text!r} must be a number >= 0")
    return value


def _unit_ids(args: argparse.Namespace) -> list[int]:
    if args.unit_ids:
        try:
            ids = [int(x) for x in str(args.unit_ids).split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--unit-ids: {args.unit_ids!r} is not a list of numbers") from None
    else:
        if not 1 <= args.pumps <= 247:
            raise UsageError(f"--pumps: {args.pumps} outside 1..247")
        ids = list(range(1, args.pumps + 1))
    if not ids or any(not 1 <= i <= 247 for i in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"--unit-ids: {ids} must be distinct ids in 1..247")
    return ids


def build_simulator(args: argparse.Namespace) -> tuple[ModbusPumpSimulator, list[FaultSpec]]:
    """The simulator and start-up faults described by the command line."""
    rate = _decimal("--rate", args.rate)
    vtbi = _decimal("--vtbi", args.vtbi)
    volume = _decimal("--volume", args.volume)
    max_rate = _decimal("--max-rate", args.max_rate)
    if args.speed <= 0:
        raise UsageError(f"--speed: {args.speed} must be > 0")
    configs = [
        PumpConfig(
            unit_id=unit,
            status=args.status,
            rate_ml_h=rate,
            vtbi_ml=vtbi,
            volume_ml=volume,
            max_rate_ml_h=max_rate,
        )
        for unit in _unit_ids(args)
    ]
    try:
        faults = [
            FaultSpec.parse(part)
            for item in args.faults
            for part in str(item).split(",")
            if part.strip()
        ]
        sim = ModbusPumpSimulator(
            configs, profile=args.profile, speed=args.speed, baudrate=args.baudrate
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return sim, faults


async def serve(
    sim: ModbusPumpSimulator,
    url: str,
    faults: list[FaultSpec],
    scenario: Scenario | None,
    stop: asyncio.Event,
) -> None:
    """Serve until ``stop`` is set, playing ``scenario`` meanwhile."""
    async with sim.serving(url) as served:
        for spec in faults:
            sim.apply(spec)
        sys.stdout.write(
            f"serving {served.profile} on {served.url} "
            f"unit ids {','.join(map(str, served.unit_ids))} speed {sim.clock.speed:g}\n"
        )
        sys.stdout.flush()
        async with asyncio.TaskGroup() as tg:
            player = (
                tg.create_task(play(sim, scenario), name="modbus-scenario") if scenario else None
            )
            await stop.wait()
            if player is not None:
                player.cancel()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond sim modbus``."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        sim, faults = build_simulator(args)
        scenario = load_scenario(args.scenario) if args.scenario else None
    except (UsageError, ScenarioError) as exc:
        sys.stderr.write(f"infusiond sim modbus: {exc}\n")
        return EXIT_USAGE
    url = args.serial or args.listen or DEFAULT_LISTEN

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(sim, url, faults, scenario, stop)

    asyncio.run(main())
    return EXIT_OK
