"""Seeded fault schedules run against the real gateway in virtual time.

A schedule is a list of steps (commands, waits, device faults, front-panel changes, restarts
and crashes, broker outages, journal write faults). :func:`generate` draws one from a seed;
:func:`run_schedule` runs it on a fresh data dir: the real :class:`daemon.core.gateway.Gateway`
(gate, channels, real SQLite journal) against :mod:`tests.sim.fakes`, checking the invariants
of :mod:`tests.sim.invariants` after every step and, after a settling period with every fault
healed, at the end. Everything is deterministic: the same seed gives the same run, so a failure
is replayed with ``make fuzz SEED=<seed>`` and reported with its :func:`shrink`-ed schedule.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from daemon.base.config import Config
from daemon.base.timefmt import format_ts
from daemon.core.gateway import Gateway
from drivers.base import AlarmCode, RunState
from tests.sim.adapter import (
    JournalFaults,
    Program,
    build_gateway,
    command_of_current_task,
    make_program,
    shipped_library,
    simulated_process,
)
from tests.sim.fakes import CrashPoint, LinkFault, SimBridge, SimBroker, SimDriver, SimPump
from tests.sim.invariants import Monitor, Sent, Violation
from tests.sim.vclock import VirtualTimeDeadlock, VirtualTimeLoop

SETTLE_S = 15.0  # after the schedule: every fault healed, then this long before the final checks
DEFAULT_LENGTH = 10
STOP_TIMEOUT_S = 120.0
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else None

# -- the bedside ------------------------------------------------------------------------------

_COMMON = {
    "bed": "bed-1",
    "library_profile": "adult-icu",
    "weight_kg": 70,
    "diluent": "D5W",
    "route": "central",
    "driver": "modbus",
    "unit_id": 1,
}
PUMPS: dict[str, dict[str, Any]] = {
    "pump-1": {
        "drug": "norepinephrine",
        "concentration": {"value": 4, "unit": "ug/mL"},
        "rate": Decimal("52.5"),
    },
    "pump-2": {
        "drug": "vasopressin",
        "concentration": {"value": 0.2, "unit": "[USP'U]/mL"},
        "rate": Decimal("9.0"),
    },
}
#: programs a clinician may send: (drug, concentration, unit, dose unit, diluent, route, dose)
PROGRAMS: dict[str, tuple[str, str, str, str, str, str, float]] = {
    "ne64": ("norepinephrine", "64", "ug/mL", "ug/kg/min", "D5W", "central", 0.05),
    "ne16": ("norepinephrine", "16", "ug/mL", "ug/kg/min", "D5W", "central", 0.03),
    "ne4": ("norepinephrine", "4", "ug/mL", "ug/kg/min", "D5W", "central", 0.04),
    "ne32-peripheral": ("norepinephrine", "32", "ug/mL", "ug/kg/min", "D5W", "peripheral", 0.04),
    "ne64-ns": ("norepinephrine", "64", "ug/mL", "ug/kg/min", "NS", "central", 0.05),
    "vaso1": ("vasopressin", "1", "[USP'U]/mL", "[USP'U]/min", "NS", "central", 0.03),
}


def sim_config(data_dir: Path) -> Config:
    return Config(
        gateway_id="sim",
        data_dir=data_dir,
        control={"enabled": True, "allowlist": ["nurse-1"]},
        pumps=[
            {
                "id": pid,
                "url": "tcp://127.0.0.1:1",
                "drug": setup["drug"],
                "concentration": setup["concentration"],
                "poll_period_s": 1.0,
                **_COMMON,
            }
            for pid, setup in PUMPS.items()
        ],
    )


def initial_bags() -> dict[str, Program]:
    units = {"norepinephrine": "ug/kg/min", "vasopressin": "[USP'U]/min"}
    return {
        pid: make_program(
            s["drug"],
            str(s["concentration"]["value"]),
            s["concentration"]["unit"],
            units[s["drug"]],
            "D5W",
            "central",
        )
        for pid, s in PUMPS.items()
    }


# -- steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """A clinician's command (``age_s`` > ttl makes it arrive expired)."""

    pump: str
    action: str
    cid: str
    value: float | None = None
    program: str | None = None
    age_s: float = 0.0


@dataclass(frozen=True)
class Confirm:
    """Re-send the pump's latest ``needs_confirmation`` command with its token."""

    pump: str
    cid: str
    same_id: bool = False


@dataclass(frozen=True)
class Resend:
    """Send an earlier command again with the same id: the same content (a client retry) or,
    with ``conflict``, to the other pump (an id clash): neither may run it a second time."""

    index: int
    conflict: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Fault:
    pump: str
    fault: LinkFault


@dataclass(frozen=True)
class Heal:
    pump: str


@dataclass(frozen=True)
class Panel:
    """Someone sets the rate at the pump's front panel."""

    pump: str
    rate: Decimal


@dataclass(frozen=True)
class DeviceEvent:
    pump: str
    what: str  # power_reset | withdrawing | occlusion | clear


@dataclass(frozen=True)
class Restart:
    crash: bool = False


@dataclass(frozen=True)
class CrashAt:
    """The gateway process dies at this point of the pump's next write."""

    pump: str
    point: CrashPoint


@dataclass(frozen=True)
class Broker:
    up: bool


@dataclass(frozen=True)
class JournalFault:
    point: str  # write | commit
    skip: int
    count: int
    message: str = "database or disk is full"


@dataclass(frozen=True)
class JournalHeal:
    pass


Step = (
    Send
    | Confirm
    | Resend
    | Wait
    | Fault
    | Heal
    | Panel
    | DeviceEvent
    | Restart
    | CrashAt
    | Broker
    | JournalFault
    | JournalHeal
)

_DOSES = [0.005, 0.02, 0.03, 0.04, 0.045, 0.05, 0.06, 0.1, 0.5, 1.5, 3.0, 3.2]
_RATES = [0.05, 1.0, 3.28, 9.0, 12.0, 52.5, 63.0, 150.0, 999.99, 1000.0, 3500.0]
_PANEL = ["0.5", "2.0", "30.0", "60.0", "120.0", "3500.0"]
_WAITS = [0.01, 0.3, 1.0, 2.5, 6.0]


def generate(seed: int, length: int) -> list[Step]:
    """A random schedule of ``length`` steps, the same for the same seed."""
    rng = random.Random(seed)
    pumps = sorted(PUMPS)
    steps: list[Step] = []
    for n in range(length):
        pump = rng.choice(pumps)
        cid = f"s{seed}-{n}"
        kind = rng.choices(
            [
                "send",
                "confirm",
                "resend",
                "wait",
                "fault",
                "heal",
                "panel",
                "device",
                "restart",
                "crash_at",
                "broker",
                "journal",
                "journal_heal",
            ],
            weights=[34, 7, 4, 20, 8, 5, 6, 3, 4, 3, 3, 3, 2],
        )[0]
        if kind == "send":
            action = rng.choices(
                ["set_dose", "set_rate", "stop", "pause", "start", "program"],
                weights=[35, 15, 10, 5, 15, 15],
            )[0]
            age = 45.0 if rng.random() < 0.05 else 0.0
            if action == "set_dose":
                steps.append(Send(pump, action, cid, value=rng.choice(_DOSES), age_s=age))
            elif action == "set_rate":
                steps.append(Send(pump, action, cid, value=rng.choice(_RATES), age_s=age))
            elif action == "program":
                if rng.random() < 0.6:  # the clinician's flow: stop, then program the new bag
                    steps.extend([Send(pump, "stop", f"{cid}-stop"), Wait(0.3)])
                steps.append(Send(pump, action, cid, program=rng.choice(sorted(PROGRAMS))))
            else:
                steps.append(Send(pump, action, cid, age_s=age))
        elif kind == "confirm":
            steps.append(Confirm(pump, cid, same_id=rng.random() < 0.3))
        elif kind == "resend":
            steps.append(Resend(rng.randrange(1000), conflict=rng.random() < 0.3))
        elif kind == "wait":
            steps.append(Wait(rng.choice(_WAITS)))
        elif kind == "fault":
            steps.append(Fault(pump, rng.choice([f for f in LinkFault if f is not LinkFault.NONE])))
        elif kind == "heal":
            steps.append(Heal(pump))
        elif kind == "panel":
            steps.append(Panel(pump, Decimal(rng.choice(_PANEL))))
        elif kind == "device":
            steps.append(
                DeviceEvent(pump, rng.choice(["power_reset", "withdrawing", "occlusion", "clear"]))
            )
        elif kind == "restart":
            steps.append(Restart(crash=rng.random() < 0.5))
        elif kind == "crash_at":
            steps.append(CrashAt(pump, rng.choice(list(CrashPoint))))
        elif kind == "broker":
            steps.append(Broker(up=rng.random() < 0.5))
        elif kind == "journal":
            steps.append(
                JournalFault(
                    rng.choice(["write", "commit"]),
                    rng.randrange(4),
                    rng.randrange(1, 5),
                    rng.choice(["database or disk is full", "disk I/O error"]),
                )
            )
        else:
            steps.append(JournalHeal())
        if kind != "wait" and rng.random() < 0.5:
            steps.append(Wait(rng.choice(_WAITS)))
    return steps


# -- running ----------------------------------------------------------------------------------


@dataclass
class _Run:
    """One schedule in progress (inside the virtual-time loop)."""

    steps: Sequence[Step]
    data_dir: Path
    loop: VirtualTimeLoop
    seed: int
    faults: JournalFaults = field(default_factory=JournalFaults)
    pumps: dict[str, SimPump] = field(default_factory=dict)
    broker: SimBroker = field(default_factory=lambda: SimBroker("sim"))
    monitor: Monitor = field(init=False)
    config: Config = field(init=False)
    gateway: Gateway | None = None
    run_task: asyncio.Task[None] | None = None
    crash_requested: asyncio.Event = field(default_factory=asyncio.Event)
    loop_errors: list[str] = field(default_factory=list)
    sent_order: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = sim_config(self.data_dir)
        self.monitor = Monitor(
            shipped_library(),
            initial_bags(),
            self.data_dir,
            journal_failures=lambda: len(self.faults.failed),
        )
        for pid, setup in PUMPS.items():
            self.pumps[pid] = SimPump(
                pid,
                RunState.INFUSING,
                setup["rate"],
                on_seen=self.monitor.on_seen,
                on_write=self.monitor.on_write,
            )
        self.broker.on_result = lambda r: self.monitor.on_result(r, self.pumps)

    def on_loop_error(self, _loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, asyncio.CancelledError):
            return
        task = context.get("task") or context.get("future")
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)[:60]
        self.loop_errors.append(f"{context.get('message')} in {name}: {exc!r}")

    def trace(self) -> list[str]:
        results = [
            f"{r.at:.3f} {r.pump_id} result "
            + repr(sorted((k, v) for k, v in r.data.items() if k != "confirm_token"))
            for r in self.broker.results
        ]
        writes = [
            f"{w.at:.3f} {pid} write {w.op} {w.value} -> {w.rate} by {w.command_id}"
            for pid, pump in self.pumps.items()
            for w in pump.writes
        ]
        events = [f"event {sorted(e.items())!r}" for e in self.broker.events]
        return results + writes + events

    # -- the gateway's life --------------------------------------------------------------

    def _start(self) -> None:
        drivers = {
            pid: SimDriver(
                pump,
                loop_time=self.loop.time,
                command_of_task=command_of_current_task,
                on_crash_point=self.crash_requested.set,
            )
            for pid, pump in self.pumps.items()
        }
        self.gateway = build_gateway(
            self.config,
            drivers=drivers,
            bridge_factory=lambda journal: SimBridge(self.broker, journal, self.loop.time),
            clock=self.loop.wall_clock,
        )
        self.run_task = asyncio.get_running_loop().create_task(
            self.gateway.run(), name="sim-gateway"
        )
        self.monitor.last_restart = self.loop.time()

    async def _crash(self) -> None:
        """The process dies: every task stops where it is (nothing more reaches the journal)."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.crash_requested.clear()
        self.run_task = None

    async def _stop(self) -> None:
        """A clean stop; a crash point reached while draining kills the process there."""
        assert self.gateway is not None
        assert self.run_task is not None
        self.gateway.stop()
        crash = asyncio.get_running_loop().create_task(self.crash_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {self.run_task, crash}, timeout=STOP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            crash.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await crash
        if self.run_task in done:
            self.run_task = None
            return
        if self.crash_requested.is_set():
            await self._crash()
            return
        raise Violation("I5", f"the gateway did not stop within {STOP_TIMEOUT_S:g} s of stop()")

    async def _restart(self, *, crash: bool) -> None:
        if crash:
            await self._crash()
        else:
            await self._stop()
        self.monitor.check_journal()
        self._start()

    async def _wait(self, seconds: float) -> None:
        """Let virtual time pass; a crash point reached meanwhile restarts the gateway there."""
        deadline = self.loop.time() + seconds
        while (left := deadline - self.loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    await self.crash_requested.wait()
            except TimeoutError:
                return
            await self._restart(crash=True)
            self._check()

    def _check(self) -> None:
        self.monitor.raise_first()
        task = self.run_task
        if task is not None and task.done():
            exc = task.exception() if not task.cancelled() else None
            raise Violation("I5", f"the gateway exited on its own: {exc!r}")
        self.monitor.check_deadlines(self.loop.time())

    # -- steps ---------------------------------------------------------------------------

    def _send(self, pump: str, body: dict[str, Any], program: Program | None) -> None:
        cid = body["id"]
        if cid not in self.monitor.sent:
            self.sent_order.append(cid)
        self.monitor.on_send(cid, Sent(pump, body, self.loop.time(), program))
        self.broker.send_command(pump, body)

    def _body(self, step: Send) -> tuple[dict[str, Any], Program | None]:
        body: dict[str, Any] = {
            "id": step.cid,
            "issued_at": format_ts(self.loop.wall_clock() - _seconds(step.age_s)),
            "ttl_s": 30,
            "by": {"clinician": "nurse-1"},
            "action": step.action,
        }
        bag = self.monitor.current_bag(step.pump)
        program: Program | None = None
        if step.action == "set_dose":
            body["dose"] = {"value": step.value, "unit": bag.dose_unit}
        elif step.action == "set_rate":
            body["rate"] = {"value": step.value, "unit": "mL/h"}
        elif step.action == "program" and step.program is not None:
            drug, conc, conc_unit, dose_unit, diluent, route, dose = PROGRAMS[step.program]
            program = make_program(drug, conc, conc_unit, dose_unit, diluent, route)
            body["program"] = {
                "drug": drug,
                "concentration": {"value": float(conc), "unit": conc_unit},
                "diluent": diluent,
                "route": route,
                "profile": "adult-icu",
                "weight_kg": 70,
                "dose": {"value": dose, "unit": dose_unit},
            }
        return body, program

    def _fresh(self, body: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return {**body, "issued_at": format_ts(self.loop.wall_clock()), **changes}

    async def _apply(self, step: Step) -> None:
        if isinstance(step, Send):
            body, program = self._body(step)
            self._send(step.pump, body, program)
        elif isinstance(step, Confirm):
            asked = [
                r
                for r in self.broker.results
                if r.pump_id == step.pump
                and r.data.get("phase") == "needs_confirmation"
                and r.data.get("id") in self.monitor.sent
            ]
            if asked:
                first = self.monitor.sent[asked[-1].data["id"]]
                confirm = {"token": asked[-1].data["confirm_token"], "reason": "sim: bedside check"}
                cid = first.body["id"] if step.same_id else step.cid
                self._send(
                    step.pump, self._fresh(first.body, id=cid, confirm=confirm), first.program
                )
        elif isinstance(step, Resend):
            if self.sent_order:
                first = self.monitor.sent[self.sent_order[step.index % len(self.sent_order)]]
                pump = first.pump_id
                if step.conflict:
                    pump = next(p for p in sorted(PUMPS) if p != first.pump_id)
                self.broker.send_command(pump, self._fresh(first.body))
        elif isinstance(step, Wait):
            await self._wait(step.seconds)
        elif isinstance(step, Fault):
            self.pumps[step.pump].fault = step.fault
        elif isinstance(step, Heal):
            self.pumps[step.pump].fault = LinkFault.NONE
        elif isinstance(step, Panel):
            pump = self.pumps[step.pump]
            if pump.rate != step.rate:
                pump.front_panel(
                    step.rate, self.monitor.on_panel(pump, step.rate, self.loop.time())
                )
        elif isinstance(step, DeviceEvent):
            pump = self.pumps[step.pump]
            if step.what == "power_reset":
                pump.power_reset()
            elif step.what == "withdrawing":
                pump.raise_alarm(AlarmCode.WITHDRAWING)
            elif step.what == "occlusion":
                pump.raise_alarm(AlarmCode.OCCLUSION)
            else:
                pump.clear_alarms()
        elif isinstance(step, Restart):
            await self._restart(crash=step.crash)
        elif isinstance(step, CrashAt):
            self.pumps[step.pump].crash_at = step.point
        elif isinstance(step, Broker):
            self.broker.set_up(step.up)
        elif isinstance(step, JournalFault):
            self.faults.arm(step.point, step.skip, step.count, step.message)
        else:
            self.faults.disarm()

    async def main(self) -> None:
        random.seed(self.seed)  # the gateway's backoff jitter
        asyncio.get_running_loop().set_exception_handler(self.on_loop_error)
        try:
            self._start()
            await self._wait(2.0)
            self._check()
            for step in self.steps:
                await self._apply(step)
                self._check()
            for pump in self.pumps.values():
                pump.fault = LinkFault.NONE
                pump.crash_at = None
            self.broker.set_up(True)
            self.faults.disarm()
            await self._wait(SETTLE_S)
            self._check()
            self.monitor.check_deadlines(self.loop.time(), final=True)
            self.monitor.check_panel_changes()
            if self.loop_errors:  # after I3/I4: a dead command task is reported by what it broke
                raise Violation("I5", f"a gateway task died unhandled: {self.loop_errors[0]}")
            await self._stop()
            self.monitor.check_journal()
        finally:
            await self._crash()


def _answer(data: dict[str, Any]) -> str:
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    phase = str(data.get("phase"))
    return phase if code is None else f"{phase}:{code}"


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


@dataclass(frozen=True)
class Failure:
    """A schedule that broke an invariant."""

    seed: int
    steps: tuple[Step, ...]
    violation: Violation
    length: int | None = None  # the generated length (None: a hand-written schedule)

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {self.violation}", "schedule:"]
        lines.extend(f"  {n:2d}. {step!r}" for n, step in enumerate(self.steps))
        if self.length is not None:
            lines.append(f"replay: make fuzz SEED={self.seed} LENGTH={self.length}")
        return "\n".join(lines)


def run_schedule(
    steps: Sequence[Step],
    *,
    seed: int = 0,
    trace: list[str] | None = None,
    answers: dict[str, list[str]] | None = None,
    on_finish: Callable[[Path], None] | None = None,
) -> Violation | None:
    """Run one schedule on a fresh data dir; the first broken invariant, or None.

    ``trace`` (if given) receives what the gateway did, in order: every result it emitted
    (virtual time, pump, data without the random confirm token), every write that reached a
    pump, every event it published: two runs of one schedule give the same trace.
    ``answers`` (if given) receives, per command id, its results in order: the phase, with the
    error code after a colon when there is one (``"accepted"``, ``"rejected:busy"``).
    ``on_finish`` (if given) is called with the data dir once the gateway is gone, before the
    dir is removed (to read the journal)."""
    loop = VirtualTimeLoop()
    try:
        with tempfile.TemporaryDirectory(prefix="infusiond-sim-", dir=SCRATCH) as tmp:
            run = _Run(steps, Path(tmp) / "data", loop, seed)
            try:
                with simulated_process(run.faults, loop.wall_clock, loop.time), capture_logs():
                    try:
                        loop.run_until_complete(run.main())
                    except Violation as violation:
                        return violation
                    except VirtualTimeDeadlock as exc:
                        return Violation("I5", f"the gateway deadlocked: {exc}")
                return None
            finally:
                if trace is not None:
                    trace.extend(run.trace())
                if on_finish is not None:
                    on_finish(run.data_dir)
                if answers is not None:
                    for result in run.broker.results:
                        cid = result.data.get("id")
                        if isinstance(cid, str):
                            answers.setdefault(cid, []).append(_answer(result.data))
    finally:
        loop.close()


def shrink(steps: Sequence[Step], code: str, *, seed: int = 0, budget: int = 200) -> list[Step]:
    """Drop steps one at a time while the same invariant still breaks (a minimal schedule)."""
    current = list(steps)
    tries = 0
    changed = True
    while changed and tries < budget:
        changed = False
        for i in reversed(range(len(current))):
            candidate = current[:i] + current[i + 1 :]
            tries += 1
            found = run_schedule(candidate, seed=seed)
            if found is not None and found.code == code:
                current = candidate
                changed = True
            if tries >= budget:
                break
    return current


def run_seed(seed: int, length: int, *, minimise: bool = True) -> Failure | None:
    steps = generate(seed, length)
    violation = run_schedule(steps, seed=seed)
    if violation is None:
        return None
    if minimise:
        steps = shrink(steps, violation.code, seed=seed)
        violation = run_schedule(steps, seed=seed) or violation
    return Failure(seed, tuple(steps), violation, length)


def _probe(job: tuple[int, int]) -> tuple[int, str, str] | None:
    """Run one seed without shrinking (in a worker process): (seed, code, message) or None."""
    seed, length = job
    violation = run_schedule(generate(seed, length), seed=seed)
    return None if violation is None else (seed, violation.code, str(violation))


def campaign(
    seeds: Sequence[int],
    length: int,
    *,
    workers: int = 1,
    progress: Callable[[int, str | None], None] | None = None,
    stop_after: int | None = None,
    minimise: int = 1,
) -> CampaignResult:
    """Run every seed (in ``workers`` processes); the first ``minimise`` failures are shrunk."""
    found: list[tuple[int, str, str]] = []
    jobs = [(seed, length) for seed in seeds]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            results = pool.map(_probe, jobs, chunksize=25)
        else:
            results = map(_probe, jobs)
        for (seed, _), result in zip(jobs, results, strict=True):
            if result is not None:
                found.append(result)
            if progress is not None:
                progress(seed, None if result is None else result[2])
            if stop_after is not None and len(found) >= stop_after:
                break
    shrunk = [run_seed(seed, length) for seed, _code, _message in found[:minimise]]
    return CampaignResult(
        [(seed, message) for seed, _code, message in found], [f for f in shrunk if f is not None]
    )


@dataclass(frozen=True)
class CampaignResult:
    """Every failing seed with its violation, and the first ones shrunk."""

    failing: list[tuple[int, str]]
    shrunk: list[Failure]

    def describe(self, limit: int = 10) -> str:
        lines = [f"{len(self.failing)} schedule(s) broke an invariant:"]
        lines.extend(f"  seed {seed}: {message}" for seed, message in self.failing[:limit])
        lines.extend(failure.describe() for failure in self.shrunk)
        return "\n".join(lines)
