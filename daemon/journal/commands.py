"""Command-id dedupe and the command lifecycle in the journal: claiming an id, recording each
phase's outcome, admitting a checked command and settling it with its events in one
transaction, and finding the commands a crash interrupted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from daemon.base.envelope import encode
from daemon.base.events import PumpEvent
from daemon.base.payload import JsonObject
from daemon.base.results import PENDING, KeptOutcome, VerdictJson
from daemon.base.timefmt import format_ts
from daemon.journal.outbox import EventOutbox
from daemon.journal.records import (
    CommandClaim,
    InterruptedCommand,
    JournalKind,
    JournalRow,
    OpenClaim,
    OutboxItem,
    loads_command,
    loads_outcome,
)


class CommandLog(EventOutbox):
    """The ``commands`` table: every command id once, with its latest outcome."""

    def claim_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: JsonObject,
        ts: datetime,
    ) -> CommandClaim:
        """Journal an incoming command and claim its id.

        A new id is stored with the command as received (outcome not yet known). A known id is
        not claimed again: the answer carries its recorded first outcome, and the journal row
        says ``duplicate``.
        """
        self._require_transaction()
        row = self._conn.execute(
            "SELECT first, pump_id FROM commands WHERE id=?", (command_id,)
        ).fetchone()
        duplicate = row is not None
        self.append(
            JournalKind.COMMAND,
            {"id": command_id, "command": command, "duplicate": duplicate},
            ts=ts,
            pump_id=pump_id,
        )
        if duplicate:
            first = PENDING if row[0] is None else loads_outcome(row[0], where=_where(command_id))
            return CommandClaim(command_id, first, row[1])
        self._conn.execute(
            "INSERT INTO commands (id, pump_id, received_at, first, command, phase)"
            " VALUES (?, ?, ?, NULL, ?, NULL)",
            (command_id, pump_id, format_ts(ts), encode(command).decode()),
        )
        return CommandClaim(command_id, None)

    def set_command_outcome(
        self,
        command_id: str,
        outcome: KeptOutcome,
        *,
        pump_id: str | None,
        ts: datetime,
        kind: JournalKind = JournalKind.COMMAND,
    ) -> JournalRow:
        """Record the outcome a duplicate will be told (and a restart settles from).

        Later phases of the same command (accepted -> applied) overwrite earlier ones, so
        ``first`` is the latest known outcome of the first execution. The outcome is also
        journaled (``kind`` verdict/override/command as the caller sees fit).
        """
        self._require_transaction()
        data = outcome.to_json()
        phase = None if outcome.phase is None else outcome.phase.value
        self._conn.execute(
            "INSERT INTO commands (id, pump_id, received_at, first, phase) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET first=excluded.first, phase=excluded.phase",
            (command_id, pump_id, format_ts(ts), encode(data).decode(), phase),
        )
        return self.append(kind, {"id": command_id, "outcome": data}, ts=ts, pump_id=pump_id)

    def admit_command(
        self,
        command_id: str,
        *,
        pump_id: str | None,
        command: JsonObject,
        verdict: VerdictJson,
        outcome: KeptOutcome,
        ts: datetime,
    ) -> CommandClaim:
        """Claim a command whose verdict (already evaluated) lets it go ahead: the command row,
        then, for a new id only, the verdict row and the ``outcome`` (``accepted``) row.

        One call, one transaction: nothing may reach the device before all three are durable,
        and none of them without the others. A repeated id writes only its ``duplicate``
        command row (as :meth:`claim_command`); the caller then decides as for any repeat.
        """
        claim = self.claim_command(command_id, pump_id=pump_id, command=command, ts=ts)
        if claim.is_new:
            self.append(
                JournalKind.VERDICT,
                {"id": command_id, "verdict": verdict.to_json()},
                ts=ts,
                pump_id=pump_id,
            )
            self.set_command_outcome(command_id, outcome, pump_id=pump_id, ts=ts)
        return claim

    def settle_command(
        self,
        command_id: str,
        outcome: KeptOutcome,
        *,
        pump_id: str,
        events: Sequence[PumpEvent],
        ts: datetime,
    ) -> list[OutboxItem]:
        """Record the events a command caused (each with the next seq, in order), then its
        final outcome: one transaction, so no outcome is durable without its events."""
        items = [self.record_event(pump_id, event, ts=ts) for event in events]
        self.set_command_outcome(command_id, outcome, pump_id=pump_id, ts=ts)
        return items

    def interrupted_commands(self) -> list[InterruptedCommand]:
        """Commands left at ``accepted`` (see :class:`InterruptedCommand`), oldest first, with
        the command as received: one indexed query, however long the journal."""
        return [
            InterruptedCommand(
                cid, pump_id, loads_outcome(first, where=_where(cid)), loads_command(command)
            )
            for cid, pump_id, first, command in self._conn.execute(
                "SELECT id, pump_id, first, command FROM commands INDEXED BY commands_unsettled"
                " WHERE phase = 'accepted' ORDER BY received_at"
            )
        ]

    def open_claims(self) -> list[OpenClaim]:
        """Command ids claimed with no outcome recorded (see :class:`OpenClaim`), oldest first:
        one indexed query, however long the journal."""
        return [
            OpenClaim(cid, pump_id, loads_command(command))
            for cid, pump_id, command in self._conn.execute(
                "SELECT id, pump_id, command FROM commands INDEXED BY commands_open"
                " WHERE first IS NULL ORDER BY received_at"
            )
        ]

    def settled_since(self, since: datetime) -> list[InterruptedCommand]:
        """Commands received at or after ``since`` whose recorded outcome is final after an
        ``accepted`` (applied, failed, uncertain), oldest first: after a crash, their result
        may have been journaled but never published."""
        return [
            InterruptedCommand(cid, pump_id, loads_outcome(first, where=_where(cid)), None)
            for cid, pump_id, first in self._conn.execute(
                "SELECT id, pump_id, first FROM commands WHERE received_at >= ?"
                " AND phase IN ('applied', 'failed', 'uncertain') ORDER BY received_at",
                (format_ts(since),),
            )
        ]


def _where(command_id: str) -> str:
    """How a malformed stored outcome is named: its row of the ``commands`` table."""
    return f"journal commands[{command_id!r}].first"
