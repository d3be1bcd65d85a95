"""``infusiond sim modbus``: serve simulated pumps over Modbus TCP or RTU until interrupted.

Examples::

    infusiond sim modbus --listen tcp://127.0.0.1:5020 --status infusing --rate 52.5
    infusiond sim modbus --serial /dev/pts/7 --pumps 3 --faults 2:occlusion
    infusiond sim modbus --scenario sim_devices/scenarios/modbus-occlusion.toml --speed 10
    infusiond sim modbus --listen tcp://127.0.0.1:5020 --pumps 3 --port-per-pump

With ``--port-per-pump`` pump k answers as unit 1 on port BASE+k-1 (one device per port), or,
with port 0 (``--listen tcp://127.0.0.1:0``), on a port the OS picks for each pump (printed);
``k:FAULT`` / scenario ``pump = k`` address pump k. A scenario's ``[[pumps]]`` replace the pump
options (``pump`` = unit id).

It prints what it serves (URL, unit ids, map) on stdout and logs every register write
(structlog, on stderr). Faults: ``[UNIT:]NAME[=ARG]``, several per flag or comma-separated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from decimal import Decimal, InvalidOperation

import structlog

from drivers.modbus.bus import LinkKind, parse_url
from sim_devices.clock import SimClock
from sim_devices.modbus_pump import Fault, FaultSpec, ModbusPumpSetup
from sim_devices.modbus_scenario import check, play, setups
from sim_devices.modbus_server import ModbusPumpSimulator, SimulatorError
from sim_devices.scenario import Scenario, ScenarioError, load_scenario

DEFAULT_LISTEN = "tcp://127.0.0.1:5020"
EXIT_OK, EXIT_CANNOT_SERVE, EXIT_USAGE = 0, 1, 2


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


class PortBank:
    """Pumps each on its own port (unit id 1), sharing one clock; pump k = ``unit`` k."""

    def __init__(self, sims: list[ModbusPumpSimulator]) -> None:
        self.sims = sims
        self.clock = sims[0].clock

    @property
    def unit_ids(self) -> list[int]:
        return list(range(1, len(self.sims) + 1))

    def _pick(self, unit: int | None) -> list[ModbusPumpSimulator]:
        if unit is None:
            return self.sims
        if not 1 <= unit <= len(self.sims):
            raise ValueError(f"no pump {unit}: pumps are 1..{len(self.sims)}")
        return [self.sims[unit - 1]]

    def inject(
        self, fault: Fault | str, arg: float | None = None, *, unit: int | None = None
    ) -> None:
        for sim in self._pick(unit):
            sim.inject(fault, arg)

    def clear(self, fault: Fault | str, *, unit: int | None = None) -> None:
        for sim in self._pick(unit):
            sim.clear(fault)


def build_simulators(
    args: argparse.Namespace, scenario: Scenario | None = None
) -> tuple[list[ModbusPumpSimulator], list[FaultSpec]]:
    """The simulator(s) and start-up faults described by the command line (and the scenario's
    ``[[pumps]]``, which replace the pump options)."""
    rate = _decimal("--rate", args.rate)
    vtbi = _decimal("--vtbi", args.vtbi)
    volume = _decimal("--volume", args.volume)
    max_rate = _decimal("--max-rate", args.max_rate)
    if args.speed <= 0:
        raise UsageError(f"--speed: {args.speed} must be > 0")
    if args.port_per_pump and (args.unit_ids or args.serial):
        raise UsageError(
            "--port-per-pump: one TCP port per pump (unit 1); not with --unit-ids or --serial"
        )
    units = _unit_ids(args)
    configs = [
        ModbusPumpSetup(
            unit_id=1 if args.port_per_pump else unit,
            status=args.status,
            rate_ml_h=rate,
            vtbi_ml=vtbi,
            volume_ml=volume,
            max_rate_ml_h=max_rate,
            serial=f"SN{unit:04d}",
        )
        for unit in units
    ]
    if scenario is not None and scenario.pumps:
        if args.port_per_pump:
            raise UsageError("--port-per-pump: not with a scenario that lists [[pumps]]")
        configs = setups(scenario, str(args.scenario))
    try:
        faults = [
            FaultSpec.parse(part)
            for item in args.faults
            for part in str(item).split(",")
            if part.strip()
        ]
        clock = SimClock(speed=args.speed)
        groups = [[c] for c in configs] if args.port_per_pump else [configs]
        sims = [
            ModbusPumpSimulator(group, profile=args.profile, clock=clock, baudrate=args.baudrate)
            for group in groups
        ]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return sims, faults


def _urls(url: str, count: int) -> list[str]:
    """``count`` consecutive ports from ``url``'s (port-per-pump mode); port 0: each pump on a
    port of its own that the OS picks."""
    if count == 1:
        return [url]
    address = parse_url(url)
    if address.kind is LinkKind.RTU_SERIAL:
        raise UsageError("--port-per-pump needs --listen with a TCP URL")
    if address.port == 0:
        return [url] * count
    return [f"{address.kind.value}://{address.host}:{address.port + i}" for i in range(count)]


async def serve(
    sims: list[ModbusPumpSimulator],
    url: str,
    faults: list[FaultSpec],
    scenario: Scenario | None,
    stop: asyncio.Event,
    *,
    origin: str = "scenario",
) -> None:
    """Serve until ``stop`` is set, playing ``scenario`` meanwhile."""
    target: ModbusPumpSimulator | PortBank = sims[0] if len(sims) == 1 else PortBank(sims)
    async with contextlib.AsyncExitStack() as stack:
        for sim, where in zip(sims, _urls(url, len(sims)), strict=True):
            served = await stack.enter_async_context(sim.serving(where))
            sys.stdout.write(
                f"serving {served.profile} on {served.url} "
                f"unit ids {','.join(map(str, served.unit_ids))} speed {sim.clock.speed:g}\n"
            )
        sys.stdout.flush()
        for spec in faults:
            target.inject(spec.fault, spec.arg, unit=spec.unit)
        async with asyncio.TaskGroup() as tg:
            player = (
                tg.create_task(play(target, scenario, origin), name="modbus-scenario")
                if scenario
                else None
            )
            await stop.wait()
            if player is not None:
                player.cancel()


def _check_units(sims: list[ModbusPumpSimulator], faults: list[FaultSpec]) -> None:
    """Every start-up fault names a pump that exists."""
    known = set(sims[0].pumps) if len(sims) == 1 else set(range(1, len(sims) + 1))
    unknown = sorted(f.unit for f in faults if f.unit is not None and f.unit not in known)
    if unknown:
        raise UsageError(f"faults name pump(s) {unknown}; pumps are {sorted(known)}")


def check_scenario(args: argparse.Namespace, scenario: Scenario) -> None:
    """Play every event once on throwaway copies of the simulators: an event that names no
    pump, an unknown fault or a bad value is refused before anything is served."""
    probes, _ = build_simulators(args, scenario)
    check(probes[0] if len(probes) == 1 else PortBank(probes), scenario, str(args.scenario))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond sim modbus``."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        scenario = load_scenario(args.scenario) if args.scenario else None
        sims, faults = build_simulators(args, scenario)
        _check_units(sims, faults)
        if scenario is not None:
            check_scenario(args, scenario)
    except (UsageError, ScenarioError) as exc:
        sys.stderr.write(f"infusiond sim modbus: {exc}\n")
        return EXIT_USAGE
    url = args.serial or args.listen or DEFAULT_LISTEN

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(sims, url, faults, scenario, stop, origin=str(args.scenario))

    try:
        asyncio.run(main())
    except SimulatorError as exc:  # port in use, serial device missing: one line, no traceback
        sys.stderr.write(f"infusiond sim modbus: {exc}\n")
        return EXIT_CANNOT_SERVE
    return EXIT_OK
