"""How many durable commits an applied command costs, through the real gateway.

Each SQLite commit is an fsync (``synchronous=FULL``) on the command's critical path, so the
gate groups its writes: claim + verdict + ``accepted`` in one transaction before the device
write, the "sending" mark alone right before the write goes out, the command's events +
``applied`` in one after it (docs/performance.md). The journal's
writer is observed (not replaced) to see which rows each committed transaction carried.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import AsyncJournal, Journal, JournalRow
from tests.e2e.harness import command, dose, running_bedside
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.asyncio


def record_transactions(
    journal: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> list[list[JournalRow]]:
    """The rows of every transaction the writer thread commits from now on, in order."""
    committed: list[list[JournalRow]] = []
    core: Journal = journal._journal
    execute = journal._execute
    last = [0]  # highest row number already reported

    def observed(batch: Any) -> None:
        before = journal.commits
        execute(batch)
        if journal.commits > before:  # runs on the writer thread, which owns the connection
            rows = list(core.rows(after=last[0]))
            if rows:
                last[0] = rows[-1].n
            committed.append(rows)

    monkeypatch.setattr(journal, "_execute", observed)
    return committed


def about(cmd_id: str, row: JournalRow) -> bool:
    p = row.payload
    return cmd_id in (p.get("id"), p.get("event", {}).get("command_id"))


def shape(row: JournalRow) -> tuple[str, str | None, str | None]:
    """(kind, outcome phase, event type) of a row."""
    p = row.payload
    return row.kind, p.get("outcome", {}).get("phase"), p.get("event", {}).get("type")


async def test_an_applied_command_costs_three_commits(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Command, verdict and accepted commit together before the write; the "sending" mark
    commits alone between the pre-read and the write (so that a restart tells a write that never
    left from one that may have); the rate_changed event and applied commit together after it:
    three sequential fsyncs (five before the grouping)."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        transactions = record_transactions(bed.gateway.journal, monkeypatch)
        cmd = command(dose=dose(0.06))
        await bed.watch.send("pump-1", cmd)
        accepted = await bed.watch.result(cmd["id"], "accepted")
        await bed.watch.result(cmd["id"], "applied")
        assert bed.modbus.pump(1).rate == Decimal("63.00")
        mine = [[shape(r) for r in rows if about(cmd["id"], r)] for rows in transactions]
        assert [t for t in mine if t] == [
            [("command", None, None), ("verdict", None, None), ("command", "accepted", None)],
            [("command", "accepted", None)],  # the "sending" mark, after the pre-read
            [("event", None, "rate_changed"), ("command", "applied", None)],
        ]
        assert accepted["verdict"]["verdict"] == "accept"
