"""The collector's lean ingest path: batched intake from paho, buffered socket reads, one
COPY buffer per batch and one write of a batch's PUBACKs, each against real components."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.fleet.collector import Collector, CollectorConfig
from daemon.fleet.migrate import migrate
from daemon.fleet.paho_tuning import BufferedSocket, Inbox
from daemon.fleet.records import Batch, EventRecord
from daemon.fleet.store import connect, iter_events, store_batch
from tests.fleet.builders import T0, event_payload
from tests.support.procs import Mosquitto

WAIT_S = 60.0

# -- one COPY buffer per batch ---------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    # jsonb keeps numbers as numeric: beyond 1e15 a float may come back as an int (as before)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    session=_TEXT,
    kind=_TEXT,
    data=st.dictionaries(_TEXT, _JSON, max_size=5),
)
def test_any_text_and_json_survive_the_copy_buffer_unchanged(
    postgres_dsn: str, session: str, kind: str, data: dict[str, Any]
) -> None:
    """Tabs, newlines, backslashes, quotes and any Unicode (but NUL, which the parser refuses)
    in text columns and in ``data`` come back from PostgreSQL exactly as given."""
    gateway = f"gw-{uuid.uuid4().hex[:12]}"
    records = [
        EventRecord(gateway, session, seq, T0, "pump-1", kind, {**data, "type": kind})
        for seq in (1, 2)
    ]

    async def roundtrip() -> list[EventRecord]:
        async with await connect(postgres_dsn) as conn:
            await migrate(conn)
            result = await store_batch(conn, Batch(events=list(records)))
            assert result.events_inserted == len(records)
            return [e async for e in iter_events(conn, gateway=gateway)]

    assert asyncio.run(roundtrip()) == records


# -- buffered reads under paho ---------------------------------------------------------------


def test_buffered_socket_serves_small_reads_from_one_recv_in_order() -> None:
    """paho's 1-byte reads are served from one large read; ``pending`` says what is left;
    an empty non-blocking socket still raises BlockingIOError and EOF still reads b''."""
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        wrapped = BufferedSocket(right)
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)
        left.sendall(b"\x30\x05hello\x40\x02\x00\x01")
        assert wrapped.recv(1) == b"\x30"
        assert wrapped.pending() == 10
        assert wrapped.recv(1) == b"\x05"
        assert wrapped.recv(5) == b"hello"
        assert wrapped.recv(100) == b"\x40\x02\x00\x01"  # never more than is buffered
        assert wrapped.pending() == 0
        assert wrapped.fileno() == right.fileno()  # the rest is the socket's
        left.shutdown(socket.SHUT_WR)
        assert wrapped.recv(1) == b""


# -- batched intake --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_inbox_hands_out_batches_oldest_first_and_signals_a_full_batch() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    inbox.full_at = 3
    for mid in range(1, 6):
        inbox._put((b"t", b"p", 1, mid))
        assert inbox.full.is_set() == (mid >= 3)
    assert [m[3] for m in inbox.take(3)] == [1, 2, 3]
    assert inbox.ready.is_set()  # two are still waiting
    assert not inbox.full.is_set()
    assert [m[3] for m in inbox.take(3)] == [4, 5]
    assert not inbox.ready.is_set()


async def _run_collector(config: CollectorConfig, expected: int, dsn: str) -> Collector:
    """Run a collector until the store holds ``expected`` events (or none are expected and
    it is online and idle), then stop it."""
    collector = Collector(config)
    task = asyncio.create_task(collector.run(), name="test-collector")
    try:
        async with asyncio.timeout(WAIT_S):
            await collector.online.wait()
            async with await connect(dsn) as conn:
                await conn.execute("LISTEN infusiond_fleet")
                while True:
                    cur = await conn.execute("SELECT count(*) FROM events")
                    row = await cur.fetchone()
                    if row is not None and row[0] >= expected:
                        break
                    async for _ in conn.notifies(timeout=1.0, stop_after=1):
                        pass
    finally:
        collector.stop()
        await task
    return collector


@pytest.mark.asyncio
async def test_a_queued_backlog_is_stored_in_bounded_batches_and_acknowledged_once(
    mosquitto: Mosquitto, postgres_dsn: str
) -> None:
    """900 events queued for an offline session (mosquitto keeps 1000 by default) are stored
    in batches of at most ``batch_max``, each once; their PUBACKs (one write per batch) reach
    the broker: the same session, connected again, gets nothing back."""
    config = CollectorConfig(
        "127.0.0.1", mosquitto.port, postgres_dsn, f"c-{os.getpid()}", batch_max=200
    )
    await _run_collector(config, 0, postgres_dsn)  # the session and its subscriptions
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-pub") as client:
        for seq in range(1, 901):
            payload = event_payload("gw-a", "s1", seq)
            await client.publish("infusiond/gw-a/pump/pump-1/event", payload, qos=1)
    first = await _run_collector(config, 900, postgres_dsn)
    assert first.stats.events_inserted == 900
    assert first.stats.events_duplicate == 0
    assert first.stats.batches >= 900 // 200
    again = await _run_collector(config, 900, postgres_dsn)
    assert again.stats.messages == 0  # every message was acknowledged after its commit
    async with await connect(postgres_dsn) as conn:
        cur = await conn.execute("SELECT count(DISTINCT seq), count(*) FROM events")
        assert await cur.fetchone() == (900, 900)
