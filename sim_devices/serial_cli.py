"""Plumbing shared by ``infusiond sim newera`` and ``infusiond sim phd``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

log = structlog.get_logger("sim.serial")


def chain_addresses(vendor: str, first: int, count: int) -> range:
    """The ``count`` addresses from ``first`` on a chain (0..99), or SystemExit naming them."""
    if not 0 <= first <= 99 or not 1 <= count <= 100 - first:
        raise SystemExit(
            f"infusiond sim {vendor}: addresses {first}..{first + count - 1} not in 0..99"
        )
    return range(first, first + count)


def apply_fault_specs(specs: Iterable[str], apply: Callable[[str], None]) -> None:
    """``apply`` each entry of the ``--faults`` arguments (each may be a comma-separated list)."""
    for spec in specs:
        for item in spec.split(","):
            if item:
                apply(item)


async def serve_until_signal(
    vendor: str,
    serving: AbstractAsyncContextManager[object],
    scenario: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Serve and play ``scenario`` until SIGINT/SIGTERM; a failing scenario ends it and raises."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving:
        player = asyncio.create_task(scenario(), name=f"{vendor}-scenario")
        waiter = asyncio.create_task(stop.wait(), name=f"{vendor}-sim-stop")
        try:
            await asyncio.wait({player, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if player.done() and (failure := player.exception()) is not None:
                raise failure
            await waiter
        finally:
            for task in (player, waiter):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    log.info("simulator stopped", vendor=vendor)
