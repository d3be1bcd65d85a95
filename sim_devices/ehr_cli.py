"""``infusiond sim ehr``: the simulated EHR / alarm manager as a command-line tool.

Listens on ``--listen mllp://HOST:PORT`` (default ``mllp://127.0.0.1:2575``) for IHE PCD DEC,
IPEC and ACM, answers each with ``--answer`` (AA by default; AE/AR to exercise a gateway's
refusal handling), prints one line per message and, with ``--json PATH``, appends each as a
JSON line to PATH. Runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from drivers.hl7.ack import AckCode
from sim_devices.ehr import EhrSimulator, Received


def _endpoint(url: str) -> tuple[str, int]:
    scheme, sep, rest = url.partition("://")
    host, colon, port = (rest if sep else url).rpartition(":")
    if (sep and scheme not in {"mllp", "tcp"}) or not colon or not host or not port.isdigit():
        raise ValueError(f"--listen {url!r}: expected mllp://HOST:PORT")
    return host, int(port)


async def _main(args: argparse.Namespace, record: TextIO | None) -> None:
    def on_message(message: Received) -> None:
        print(message.line(), flush=True)  # noqa: T201
        if record is not None:
            record.write(json.dumps(message.to_json()) + "\n")
            record.flush()

    host, port = _endpoint(args.listen)
    sim = EhrSimulator(host=host, port=port, answer=AckCode(args.answer), on_message=on_message)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    print(f"EHR simulator listening on mllp://{host}:{sim.port}", flush=True)  # noqa: T201
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond sim ehr``."""
    try:
        _endpoint(args.listen)
    except ValueError as exc:
        print(f"infusiond: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    with contextlib.ExitStack() as stack:
        record = (
            stack.enter_context(Path(args.json).open("a", encoding="utf-8")) if args.json else None
        )
        asyncio.run(_main(args, record))
    return 0
