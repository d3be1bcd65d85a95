"""How many durable commits an applied command costs, through the real gateway.

Each SQLite commit is an fsync (``synchronous=FULL``) on the command's critical path, so the
gate groups its writes: claim + verdict + ``accepted`` marked "sending" in ONE transaction,
made between the driver's pre-read and its write (durable before the write goes out), and the
command's events + ``applied`` in one after it (docs/performance.md). The journal's writer is
observed (not replaced) to see which rows each committed transaction carried, and the simulated
pump's registers are read at the moment of the first commit.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.journal import AsyncJournal, Journal, JournalRow
from tests.e2e.harness import command, dose, running_bedside
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.asyncio


def record_transactions(
    journal: AsyncJournal,
    monkeypatch: pytest.MonkeyPatch,
    on_commit: Callable[[], None] = lambda: None,
) -> list[list[JournalRow]]:
    """The rows of every transaction the writer thread commits from now on, in order;
    ``on_commit`` is called on the writer thread right after each COMMIT, before any waiting
    caller is told (so before anything the caller does next)."""
    committed: list[list[JournalRow]] = []
    core: Journal = journal._journal
    commit = core.commit
    last = [0]  # highest row number already reported

    def observed() -> None:
        commit()
        on_commit()
        rows = list(core.rows(after=last[0]))  # the writer thread owns the connection
        if rows:
            last[0] = rows[-1].n
        committed.append(rows)

    monkeypatch.setattr(core, "commit", observed)
    return committed


def about(cmd_id: str, row: JournalRow) -> bool:
    p = row.payload
    return cmd_id in (p.get("id"), p.get("event", {}).get("command_id"))


def shape(row: JournalRow) -> tuple[str, str | None, str | None]:
    """(kind, outcome phase, event type) of a row."""
    p = row.payload
    return row.kind, p.get("outcome", {}).get("phase"), p.get("event", {}).get("type")


async def test_an_applied_command_costs_two_commits_the_first_durable_before_the_write(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Command, verdict and accepted (marked "sending", so that a restart tells a write that
    never left from one that may have) commit together after the pre-read, while the pump still
    runs its old rate; the rate_changed event and applied commit together after the write: two
    sequential fsyncs (five before the grouping, three with a separate sending mark)."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        pump = bed.modbus.pump(1)
        rates_at_commit: list[Decimal] = []
        transactions = record_transactions(
            bed.gateway.journal, monkeypatch, on_commit=lambda: rates_at_commit.append(pump.rate)
        )
        cmd = command(dose=dose(0.06))
        await bed.watch.send("pump-1", cmd)
        accepted = await bed.watch.result(cmd["id"], "accepted")
        await bed.watch.result(cmd["id"], "applied")
        assert pump.rate == Decimal("63.00")
        mine = [[shape(r) for r in rows if about(cmd["id"], r)] for rows in transactions]
        assert [t for t in mine if t] == [
            [("command", None, None), ("verdict", None, None), ("command", "accepted", None)],
            [("event", None, "rate_changed"), ("command", "applied", None)],
        ]
        first = next(
            i for i, rows in enumerate(transactions) if any(about(cmd["id"], r) for r in rows)
        )
        assert transactions[first][-1].payload["outcome"]["sending"] is True
        assert rates_at_commit[first] == Decimal("52.50")  # durable before the write
        assert accepted["verdict"]["verdict"] == "accept"
        assert "sending" not in accepted  # the mark is the journal's, not the contract's


async def test_a_repeated_id_found_at_the_claim_is_answered_duplicate_and_never_written(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command the library accepts outright is claimed only after the pre-read; when its id
    is already known the claim journals its duplicate row alone, the write is not sent (the
    pump's command sequence does not move) and the answer is ``duplicate`` naming the first
    outcome, as for any repeat."""
    async with running_bedside(tmp_path, mosquitto) as bed:
        cmd = command(dose=dose(0.06))
        await bed.watch.send("pump-1", cmd)
        await bed.watch.result(cmd["id"], "applied")
        seq = bed.modbus.pump(1).command_seq
        head = (await bed.gateway.journal.rows())[-1].n
        transactions = record_transactions(bed.gateway.journal, monkeypatch)
        await bed.watch.send("pump-1", cmd)
        repeat = await bed.watch.result(cmd["id"], "duplicate")
        assert repeat["first"]["phase"] == "applied"
        assert bed.modbus.pump(1).command_seq == seq
        mine = [[r for r in rows if r.n > head and about(cmd["id"], r)] for rows in transactions]
        assert [[(r.kind, r.payload.get("duplicate")) for r in t] for t in mine if t] == [
            [("command", True)]
        ]
