"""``infusiond doctor --config PATH``: is this gateway ready to run? One line per check.

Checks, in order: the configuration, the drug library (and every pump's program in it), the data
dir (usable, free space, the journal's lock, the journal's chain), the broker (a real MQTT
CONNECT with the configured TLS and credentials), every pump (its transport opened and one real
read by its driver: nothing is written to a pump), every vitals source (a listener's port can be
bound, or a peer accepts a connection), and the EHR endpoints when configured. Each line says
``ok``, ``FAIL`` or ``skipped``, what was found and, on ``FAIL``, how to fix it. The first
unusable item ends the run with exit 1; the checks after it print ``skipped``.

The doctor may run beside a running daemon: it connects to the broker with its own client id
(``<client_id>-doctor``, so the daemon keeps its session and no last will is published), says
that a daemon holds the journal, and leaves the serial lines that daemon owns alone (a query of
its own could take the place of a reply the daemon waits for).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from daemon.base.config_sections import PumpConfig, VitalsSource
from daemon.base.logging_setup import configure_logging
from daemon.base.paths import DataDirError, DataDirLocked, journal_path, lock_data_dir
from daemon.cli.config_cmd import config_problems, library_problems
from daemon.cli.doctor_links import (
    Context,
    Unusable,
    check_bindable,
    check_broker,
    check_pump,
    check_reachable,
    check_vitals,
)
from daemon.core.parts import library_path
from daemon.journal.records import JournalError
from daemon.journal.store import Journal

EXIT_OK = 0
EXIT_UNUSABLE = 1
#: below this much free space on the data dir's filesystem the journal may soon fail to write
MIN_FREE_BYTES = 100 * 1024 * 1024


class Status(enum.StrEnum):
    """The outcome of one check."""

    OK = "ok"
    FAIL = "FAIL"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's report."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" — {self.fix}" if self.fix else ""
        return f"{self.status.value:<7} {self.check}: {self.detail}{fix}"

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail} | (
            {"fix": self.fix} if self.fix else {}
        )


Check = tuple[str, Callable[[], Awaitable[str]]]
SKIPPED = "not checked (an earlier check failed)"


async def diagnose(path: Path, timeout_s: float, report: Callable[[Finding], None]) -> bool:
    """Run every check in order, calling ``report`` with each finding as it is made; True
    when everything is usable. After the first failure the remaining checks are reported
    ``skipped`` (with an unusable config, by kind: its pumps and sources are unknown)."""
    ctx = Context(path, timeout_s)
    if not await _run(f"config {path}", partial(_config, ctx), report):
        for kind in ("library", "data dir", "broker", "pumps", "vitals"):
            report(Finding(kind, Status.SKIPPED, SKIPPED))
        return False
    assert ctx.config is not None
    checks: list[Check] = [
        (f"library {library_path(ctx.config)}", partial(_library, ctx)),
        *_later_checks(ctx),
    ]
    usable = True
    for name, check in checks:
        if usable:
            usable = await _run(name, check, report)
        else:
            report(Finding(name, Status.SKIPPED, SKIPPED))
    return usable


async def _run(
    name: str, check: Callable[[], Awaitable[str]], report: Callable[[Finding], None]
) -> bool:
    try:
        detail = await check()
    except Unusable as exc:
        report(Finding(name, Status.FAIL, exc.detail, exc.fix))
        return False
    report(Finding(name, Status.OK, detail))
    return True


def _later_checks(ctx: Context) -> list[Check]:
    config = ctx.config
    assert config is not None
    checks: list[Check] = [
        (f"data dir {config.data_dir}", partial(_data_dir, ctx)),
        (f"broker {config.broker.url}", partial(check_broker, ctx)),
    ]
    for index, pump in enumerate(config.pumps):
        checks.append((_pump_name(pump), partial(check_pump, ctx, index, pump)))
    for index, source in enumerate(config.vitals):
        checks.append((_vitals_name(source), partial(check_vitals, ctx, index, source)))
    if config.hl7_out is not None:
        out = config.hl7_out
        checks.append(
            (f"ehr {out.url}", partial(check_reachable, ctx, "hl7_out.url", out.host, out.port))
        )
    if config.piv is not None:
        piv = config.piv
        checks.append(
            (
                f"piv listener {piv.listen}",
                partial(check_bindable, ctx, "piv.listen", piv.host, piv.port),
            )
        )
    return checks


def _pump_name(pump: PumpConfig) -> str:
    return f"pump {pump.id} ({pump.driver} {pump.url})"


def _vitals_name(source: VitalsSource) -> str:
    where = f"listen {source.listen}" if source.listen else f"connect {source.connect}"
    return f"vitals {source.bed} ({where})"


# -- config and library ---------------------------------------------------------------------


async def _config(ctx: Context) -> str:
    config, problems = await asyncio.to_thread(config_problems, ctx.path)
    if problems:
        raise Unusable(
            "; ".join(problems),
            f"fix the keys named (`infusiond config check --config {ctx.path}` lists each)",
        )
    assert config is not None
    ctx.config = config
    return (
        f"gateway {config.gateway_id}, {len(config.pumps)} pump(s), "
        f"{len(config.vitals)} vitals source(s)"
    )


async def _library(ctx: Context) -> str:
    config = ctx.config
    assert config is not None
    library, problems = await asyncio.to_thread(library_problems, config)
    if problems:
        raise Unusable(
            "; ".join(problems),
            f"run `infusiond library check {library_path(config)}`; "
            "check [library] and each pump's drug and library_profile",
        )
    assert library is not None
    ident = library.identity
    signed = (
        "signature verified"
        if config.library is not None and config.library.require_signature
        else "no signature required"
    )
    return (
        f"{ident.name} {ident.version} sha256 {ident.sha256[:12]}, consistent, {signed}; "
        f"every pump's drug and profile are in it"
    )


# -- data dir -------------------------------------------------------------------------------


async def _data_dir(ctx: Context) -> str:
    config = ctx.config
    assert config is not None
    return await asyncio.to_thread(_data_dir_sync, ctx, config.data_dir)


def _data_dir_sync(ctx: Context, data_dir: Path) -> str:
    fix = "set data_dir (top level of the config) to a writable directory"
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Unusable(f"{existing} exists and is not a directory", fix)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise Unusable(
            f"only {free // (1024 * 1024)} MiB free (at least {MIN_FREE_BYTES // (1024 * 1024)}"
            " MiB needed)",
            "free space on that filesystem or move data_dir",
        )
    if existing != data_dir:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise Unusable(f"does not exist and {existing} is not writable", fix)
        return (
            f"does not exist yet, run will create it ({existing} is writable); "
            f"{free // 2**20} MiB free"
        )
    try:
        with lock_data_dir(data_dir):
            pass
    except DataDirLocked as exc:
        ctx.daemon_running = True
        ctx.daemon_pid = exc.pid
    except DataDirError as exc:
        raise Unusable(str(exc), fix) from None
    journal = journal_path(data_dir)
    lock = (
        f"in use by a running infusiond (pid {ctx.daemon_pid})"
        if ctx.daemon_running
        else "not in use"
    )
    if not journal.exists():
        return f"writable, {free // 2**20} MiB free, {lock}, no journal yet"
    try:
        opened = Journal.open_readonly(journal)
        try:
            verdict = opened.verify()
        finally:
            opened.close()
    except JournalError as exc:
        raise Unusable(
            str(exc), "move the file aside (a new journal starts a new session)"
        ) from None
    if not verdict.ok:
        raise Unusable(
            f"journal {journal} broken at row {verdict.first_bad}: {verdict.reason}",
            "keep the file for investigation and move it aside; run starts a new journal",
        )
    return f"writable, {free // 2**20} MiB free, {lock}, journal ok ({verdict.rows} rows)"


# -- entry point ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print one line (or JSON object) per check; exit 0 when all are usable, else 1."""

    def report(finding: Finding) -> None:
        text = json.dumps(finding.to_dict(), ensure_ascii=False) if args.json else finding.line()
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    # The findings say what went wrong; the libraries' own logging would only repeat it.
    configure_logging("error", stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    ok = asyncio.run(diagnose(Path(args.config), args.timeout, report))
    return EXIT_OK if ok else EXIT_UNUSABLE
