"""Child process for the power-cut test: writes events as fast as it can, printing each seq
once its commit returned (acknowledged), until it is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from daemon.journal import AsyncJournal, JournalKind
from tests.support.events import tagged


async def main(data_dir: Path) -> None:
    journal = await AsyncJournal.open(data_dir, gateway_id="gw")
    while True:
        items = await asyncio.gather(
            *(journal.record_event("pump-1", tagged(i)) for i in range(8)),
            journal.append(JournalKind.VERDICT, {"verdict": "accept"}, pump_id="pump-1"),
        )
        acked = [item.seq for item in items if hasattr(item, "seq")]
        sys.stdout.write(f"{max(acked)}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
