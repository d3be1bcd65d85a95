"""The journal's HL7 outbox: control ids never reused, the event cursor moves with the messages,
refusals are kept but bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.base.paths import journal_path
from daemon.journal import AsyncJournal, Journal
from daemon.journal import hl7_outbox as journal_module

pytestmark = pytest.mark.asyncio


async def test_control_ids_and_cursor_survive_a_reopen(tmp_path: Path) -> None:
    """Ids continue after a reopen (never reused); the cursor is where the last enqueue left it."""
    data = tmp_path / "data"
    async with await AsyncJournal.open(data, gateway_id="gw") as journal:
        assert await journal.run(Journal.hl7_start) == 0
        first = await journal.hl7_enqueue([("dec", lambda cid: cid.encode())] * 2, cursor=7)
        session = journal.session
    async with await AsyncJournal.open(data, gateway_id="gw") as journal:
        assert await journal.run(Journal.hl7_start) == 7
        again = await journal.hl7_enqueue([("dec", lambda cid: cid.encode())], cursor=None)
        pending = await journal.run(Journal.hl7_pending)
    assert first == [f"{session}-1", f"{session}-2"]
    assert again == [f"{session}-3"]
    assert [(p.control_id, p.payload) for p in pending] == [(c, c.encode()) for c in first + again]


async def test_refusals_leave_the_queue_and_only_the_newest_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "HL7_REFUSED_KEPT", 2)
    data = tmp_path / "data"
    async with await AsyncJournal.open(data, gateway_id="gw") as journal:
        ids = await journal.hl7_enqueue([("ipec", lambda cid: b"x")] * 5, cursor=None)
        for control_id in ids[:4]:
            await journal.run(Journal.hl7_settle, control_id, "AE")
        assert [p.control_id for p in await journal.run(Journal.hl7_pending)] == ids[4:]
    with sqlite3.connect(journal_path(data)) as conn:
        kept = conn.execute("SELECT control_id, ack FROM hl7_outbox ORDER BY n").fetchall()
    assert kept == [(ids[2], "AE"), (ids[3], "AE"), (ids[4], None)]
