"""The hash-chained SQLite journal, one module per job, and the history the HTTP API reads from
it (docs/reliability.md):

- :mod:`~daemon.journal.records`: row kinds, rows and the other typed values, errors, row hash;
- :mod:`~daemon.journal.schema`: tables, indexes, migrating older files;
- :mod:`~daemon.journal.chain`: the connection, transactions, appending and reading rows;
- :mod:`~daemon.journal.outbox`: pump events with their ``seq``, queued for MQTT;
- :mod:`~daemon.journal.commands`: command-id dedupe and the command lifecycle;
- :mod:`~daemon.journal.hl7_outbox`: IHE PCD messages waiting for the EHR's ACK;
- :mod:`~daemon.journal.queries`: the state a restart or a history window needs;
- :mod:`~daemon.journal.retention`: pruning with checkpoints;
- :mod:`~daemon.journal.verify`: walking the chain;
- :mod:`~daemon.journal.store`: :class:`Journal`, all of the above on one file, and opening it;
- :mod:`~daemon.journal.writer`: :class:`AsyncJournal`, the writer thread the daemon uses;
- :mod:`~daemon.journal.history`: recent events and rate/dose series for the HTTP API.

The names below are the journal's public API; inside the daemon, import from the defining module.
"""

from daemon.journal.hl7_outbox import HL7_REFUSED_KEPT
from daemon.journal.records import (
    GENESIS_HASH,
    CommandClaim,
    Hl7Item,
    InterruptedCommand,
    JournalCorrupt,
    JournalError,
    JournalKind,
    JournalRow,
    OutboxItem,
    PruneReport,
    VerifyReport,
    row_hash,
)
from daemon.journal.retention import PRUNE_BATCH
from daemon.journal.schema import FORMAT
from daemon.journal.store import Journal
from daemon.journal.writer import AsyncJournal

__all__ = [
    "FORMAT",
    "GENESIS_HASH",
    "HL7_REFUSED_KEPT",
    "PRUNE_BATCH",
    "AsyncJournal",
    "CommandClaim",
    "Hl7Item",
    "InterruptedCommand",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalKind",
    "JournalRow",
    "OutboxItem",
    "PruneReport",
    "VerifyReport",
    "row_hash",
]
