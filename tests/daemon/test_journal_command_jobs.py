"""The command path's combined journal jobs: each is ONE durable transaction, all or nothing.

``admit_command`` (claim + verdict + ``accepted``) and ``settle_command`` (the command's events +
its final outcome) exist so that an accepted command costs two sequential commits instead of
five (docs/performance.md); these tests hold them to that and to the journal's guarantees. An
outbox ack, alone in its batch, commits without an fsync so that it never holds up the next
command's claim; any batch with another job in it is fully durable.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from daemon.base.results import PENDING, FirstOutcome, KeptOutcome, Phase, VerdictJson
from daemon.journal import AsyncJournal, Journal, JournalKind
from daemon.journal.records import OpenClaim
from tests.support.events import rate_changed
from tests.support.events import started as start_event

pytestmark = pytest.mark.asyncio

VERDICT = {"verdict": "accept", "rate": {"value": 63.0, "unit": "mL/h"}, "findings": []}
ACCEPTED = {"phase": "accepted", "verdict": VERDICT}
kept = KeptOutcome.from_json


async def test_admit_writes_claim_verdict_and_accepted_in_one_commit(tmp_path: Path) -> None:
    """A new id: command, verdict and accepted rows, in that order, committed once."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        before = journal.commits
        claim = await journal.admit_command(
            "c-1",
            pump_id="pump-1",
            command={"action": "set_dose"},
            verdict=VerdictJson(VERDICT),
            outcome=kept(ACCEPTED),
        )
        assert claim.is_new
        assert journal.commits == before + 1
        rows = await journal.rows()
        assert [(r.kind, r.payload) for r in rows] == [
            ("command", {"id": "c-1", "command": {"action": "set_dose"}, "duplicate": False}),
            ("verdict", {"id": "c-1", "verdict": VERDICT}),
            ("command", {"id": "c-1", "outcome": ACCEPTED}),
        ]
        # a duplicate of it is told the recorded outcome
        again = await journal.claim_command("c-1", pump_id="pump-1", command={})
        assert again.first == kept(ACCEPTED)
        assert (await journal.verify()).ok


async def test_admit_of_a_repeated_id_writes_only_its_duplicate_row(tmp_path: Path) -> None:
    """A known id is not claimed again: no verdict, no accepted, the first outcome unchanged."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await journal.claim_command("c-1", pump_id="pump-1", command={})
        await journal.set_command_outcome("c-1", kept({"phase": "applied"}), pump_id="pump-1")
        n = len(await journal.rows())
        claim = await journal.admit_command(
            "c-1",
            pump_id="pump-1",
            command={},
            verdict=VerdictJson(VERDICT),
            outcome=kept(ACCEPTED),
        )
        assert claim.first == kept({"phase": "applied"})
        added = (await journal.rows())[n:]
        assert [(r.kind, r.payload["duplicate"]) for r in added] == [("command", True)]
        assert (await journal.claim_command("c-1", pump_id="p", command={})).first == kept(
            {"phase": "applied"}
        )


async def test_admit_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    """No journal, no command: an unencodable verdict undoes the claim too (id still new)."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        with pytest.raises(ValueError, match="JSON"):
            await journal.admit_command(
                "c-1",
                pump_id="pump-1",
                command={},
                verdict=VerdictJson({"bad": float("nan")}),
                outcome=kept(ACCEPTED),
            )
        assert await journal.rows() == []
        assert (await journal.claim_command("c-1", pump_id="pump-1", command={})).is_new


async def test_settle_writes_events_then_outcome_in_one_commit(tmp_path: Path) -> None:
    """The events get consecutive seqs in order, the outcome follows; one commit; outbox fed."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await journal.claim_command("c-1", pump_id="pump-1", command={})
        journal.outbox_changed.clear()
        before = journal.commits
        events = [rate_changed(1, 2, command_id="c-1"), start_event()]
        items = await journal.settle_command(
            "c-1", kept({"phase": "applied"}), pump_id="pump-1", events=events
        )
        assert journal.commits == before + 1
        assert [i.seq for i in items] == [1, 2]
        assert journal.seq == 2
        assert journal.outbox_changed.is_set()
        assert [i.seq for i in await journal.outbox_pending()] == [1, 2]
        tail = (await journal.rows())[-3:]
        assert [(r.kind, r.payload.get("seq")) for r in tail] == [
            (JournalKind.EVENT.value, 1),
            (JournalKind.EVENT.value, 2),
            (JournalKind.COMMAND.value, None),
        ]
        assert tail[2].payload == {"id": "c-1", "outcome": {"phase": "applied"}}


async def test_settle_that_fails_keeps_neither_events_nor_outcome(tmp_path: Path) -> None:
    """An outcome is never durable without its events (nor events without it): no seq used."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await journal.claim_command("c-1", pump_id="pump-1", command={})
        with pytest.raises(ValueError, match="JSON"):
            await journal.settle_command(
                "c-1",
                KeptOutcome(FirstOutcome(Phase.APPLIED, VerdictJson({"bad": float("nan")}))),
                pump_id="pump-1",
                events=[rate_changed(1, 2)],
            )
        assert journal.seq == 0
        assert await journal.outbox_pending() == []
        assert [r.kind for r in await journal.rows()] == ["command"]
        assert (await journal.claim_command("c-1", pump_id="pump-1", command={})).first == PENDING


def _synchronous(journal: Journal) -> int:
    """The connection's ``PRAGMA synchronous`` while a job runs: 1 NORMAL, 2 FULL."""
    level: int = journal._conn.execute("PRAGMA synchronous").fetchone()[0]
    return level


async def test_acks_alone_commit_without_an_fsync_and_any_other_batch_with_one(
    tmp_path: Path,
) -> None:
    """A batch of non-durable jobs (outbox acks) runs at synchronous=NORMAL; a durable job runs
    at FULL, and so does a batch mixing both (the ack rides along, durably)."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        assert await journal._submit(_synchronous, durable=False) == 1
        assert await journal._submit(_synchronous) == 2
        assert await journal._submit(_synchronous, durable=False) == 1
        started, release = threading.Event(), threading.Event()

        def hold(_journal: Journal) -> None:
            started.set()
            release.wait(10)

        blocker = asyncio.ensure_future(journal._submit(hold))
        await asyncio.to_thread(started.wait, 10)
        # queued while the writer is busy: committed together in the next batch
        relaxed = asyncio.ensure_future(journal._submit(_synchronous, durable=False))
        durable = asyncio.ensure_future(journal._submit(_synchronous))
        await asyncio.sleep(0)  # one turn of the loop: both tasks have queued their job
        release.set()
        await blocker
        assert (await relaxed, await durable) == (2, 2)
        item = await journal.record_event("pump-1", start_event())
        assert await journal.outbox_ack([item.seq]) == 1
        assert await journal.outbox_pending() == []


async def test_an_id_claimed_without_an_outcome_is_an_open_claim_until_one_is_recorded(
    tmp_path: Path,
) -> None:
    """``open_claims``: ids claimed with no outcome (oldest first, with the command and pump);
    a repeat of one is told the pump it was claimed for; an outcome closes it."""
    async with await AsyncJournal.open(tmp_path, gateway_id="gw") as journal:
        await journal.claim_command("c-1", pump_id="pump-1", command={"action": "stop"})
        await journal.claim_command("c-2", pump_id="pump-2", command={"action": "start"})
        await journal.set_command_outcome("c-2", kept({"phase": "applied"}), pump_id="pump-2")
        assert await journal.run(Journal.open_claims) == [
            OpenClaim("c-1", "pump-1", {"action": "stop"})
        ]
        repeat = await journal.claim_command("c-1", pump_id="pump-2", command={})
        assert (repeat.first, repeat.pump) == (PENDING, "pump-1")
        await journal.set_command_outcome("c-1", kept({"phase": "rejected"}), pump_id="pump-1")
        assert await journal.run(Journal.open_claims) == []
