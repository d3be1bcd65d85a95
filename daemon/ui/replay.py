"""``infusiond journal replay``: publish a recorded session's events again, at their pace.

A journal (or a ``journal export`` file) is the recording of a session. Replaying it publishes
every recorded ``pump.event`` on ``infusiond/<gateway>/pump/<id>/event`` in ``seq`` order, with
the recorded gaps between them divided by ``--speed`` (and capped by ``--max-gap``), so that a
dashboard or an integration can be exercised against a real session without pumps. Only
events are replayed (not the retained states); the envelope keeps the recorded ``seq`` and
``ts`` and carries ``session`` ``replay-<recorded session>`` so that consumers never confuse a
replay with the live gateway. Use a gateway id other than the live one (default ``replay``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import aiomqtt

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.errors import ConfigError, PayloadError
from daemon.base.paths import default_data_dir, journal_path
from daemon.base.payload import JsonObject
from daemon.base.timefmt import parse_ts
from daemon.base.topics import Topics, is_topic_id
from daemon.journal.records import JournalError
from daemon.journal.store import Journal

PROGRESS_EVERY = 100


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One journaled ``pump.event``; ``data`` is republished exactly as it was recorded."""

    seq: int
    at: datetime
    pump_id: str
    data: JsonObject


def recorded_events(rows: Iterable[Mapping[str, object]]) -> Iterator[RecordedEvent]:
    """The events among exported journal rows (``kind == "event"``), in journal order.

    Rows that are not a pump's event with a seq (states, verdicts, a gateway-wide event)
    are skipped on purpose: only events are replayed. An event row whose payload or time
    cannot be read is a ``PayloadError`` naming the row."""
    for row in rows:
        if row.get("kind") != "event" or not row.get("pump_id"):
            continue
        payload = row.get("payload") or {}
        if not isinstance(payload, Mapping):
            raise PayloadError(f"journal row {row.get('n')}: payload: expected an object")
        event = payload.get("event")
        seq = payload.get("seq")
        if not isinstance(event, dict) or not isinstance(seq, int):
            continue
        try:
            at = parse_ts(str(row.get("ts")))
        except ValueError as exc:
            raise PayloadError(f"journal row {row.get('n')}: ts: {exc}") from None
        yield RecordedEvent(seq, at, str(row["pump_id"]), event)


def read_export(path: Path) -> list[JsonObject]:
    """Rows of a ``journal export`` file, as decoded JSON (:func:`recorded_events` reads
    them); JournalError names the bad line."""
    rows: list[JsonObject] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise JournalError(f"{path}:{number}: not a journal row ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise JournalError(f"{path}:{number}: not a journal row (not an object)")
                rows.append(row)
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {exc.strerror}") from None
    return rows


def load_recording(data_dir: Path | None, export_file: Path | None) -> tuple[str, list[JsonObject]]:
    """(recorded session, rows) from an export file or the journal in ``data_dir``."""
    if export_file is not None:
        return "file", read_export(export_file)
    journal = Journal.open_readonly(journal_path(data_dir or default_data_dir()))
    try:
        return journal.session, list(journal.export())
    finally:
        journal.close()


async def replay(
    events: list[RecordedEvent],
    *,
    host: str,
    port: int,
    gateway: str,
    session: str,
    speed: float,
    max_gap_s: float,
    progress: TextIO | None = None,
) -> int:
    """Publish ``events`` (QoS 1) with their recorded spacing; returns how many were sent."""
    topics = Topics(gateway)
    sent = 0
    async with aiomqtt.Client(
        host,
        port,
        protocol=aiomqtt.ProtocolVersion.V311,  # works with every broker, the demo's included
        identifier=f"infusiond-replay-{secrets.token_hex(3)}",
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    ) as client:
        previous: datetime | None = None
        for event in events:
            if previous is not None:
                gap = (event.at - previous).total_seconds()
                await asyncio.sleep(min(max(gap, 0.0), max_gap_s) / speed)
            previous = event.at
            body = envelope(
                Kind.PUMP_EVENT,
                gateway=gateway,
                session=session,
                seq=event.seq,
                ts=event.at,
                data=event.data,
            )
            await client.publish(topics.pump_event(event.pump_id), encode(body), qos=1)
            sent += 1
            if progress is not None and (sent % PROGRESS_EVERY == 0 or sent == len(events)):
                progress.write(f"\rreplayed {sent}/{len(events)} events")
                progress.flush()
    if progress is not None:
        progress.write("\n")
    return sent


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond journal replay``."""
    if not args.speed > 0:
        raise ConfigError(f"--speed must be > 0, got {args.speed}")
    if not is_topic_id(args.gateway):
        raise ConfigError(f"--gateway {args.gateway!r} is not a valid topic level")
    url = args.broker
    if not url.startswith("mqtt://") or ":" not in url.removeprefix("mqtt://"):
        raise ConfigError(f"--broker must be mqtt://HOST:PORT, got {url!r}")
    host, _, port_text = url.removeprefix("mqtt://").rpartition(":")
    if not port_text.isdigit():
        raise ConfigError(f"--broker port must be a number, got {port_text!r}")
    export_file = Path(args.from_file) if args.from_file else None
    data_dir = Path(args.data_dir) if args.data_dir else None
    recorded_session, rows = load_recording(data_dir, export_file)
    events = sorted(recorded_events(rows), key=lambda e: e.seq)
    sys.stderr.write(
        f"replaying {len(events)} events to {url} as gateway {args.gateway!r} "
        f"(speed {args.speed:g}x, gaps capped at {args.max_gap:g} s)\n"
    )
    sent = asyncio.run(
        replay(
            events,
            host=host,
            port=int(port_text),
            gateway=args.gateway,
            session=f"replay-{recorded_session}",
            speed=args.speed,
            max_gap_s=args.max_gap,
            progress=sys.stderr if sys.stderr.isatty() else None,
        )
    )
    sys.stdout.write(f"replayed {sent} events\n")
    return 0
