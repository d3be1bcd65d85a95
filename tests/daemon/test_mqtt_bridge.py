"""The MQTT bridge against a real mosquitto: state and last will, retained republish, outbox
replay after an outage, response topics, retained commands, TCP_NODELAY, credentials, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import socket
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from daemon.base.config_sections import BrokerConfig, TlsConfig
from daemon.base.paths import journal_path
from daemon.base.timefmt import parse_ts
from daemon.journal import AsyncJournal, Journal, JournalError
from daemon.mqtt.bridge import BridgeState, MqttBridge
from drivers.backoff import Backoff
from tests.daemon.netcut import cuttable_link
from tests.support.events import RawEvent, rate_changed, started, stopped
from tests.support.procs import Mosquitto

GW = "gw"
STATE_TOPIC = f"infusiond/{GW}/bridge/state"
WAIT_S = 10.0
# Run as root, mosquitto drops to the `mosquitto` user, which cannot read files in pytest's
# private tmp dirs; a test broker may keep the invoking user instead.
STAY_USER = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.05, maximum_s=0.3)


@contextlib.asynccontextmanager
async def running_bridge(
    broker: BrokerConfig, journal: AsyncJournal, *, wait_online: bool = True
) -> AsyncIterator[tuple[MqttBridge, asyncio.Task[None]]]:
    bridge = MqttBridge(
        broker, gateway_id=GW, client_id="infusiond-test", outbox=journal, backoff=fast_backoff()
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    try:
        if wait_online:
            async with asyncio.timeout(WAIT_S):
                await bridge.wait_state(BridgeState.ONLINE, connections=1)
        yield bridge, task
    finally:
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task


@contextlib.asynccontextmanager
async def observer(
    port: int, *topics: str, identifier: str | None = None, persistent: bool = False
) -> AsyncIterator[aiomqtt.Client]:
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=props,
    )
    async with client:
        for topic in topics:
            await client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        yield client


async def receive(
    client: aiomqtt.Client, match: Callable[[aiomqtt.Message], bool] = lambda m: True
) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT_S):
        async for message in client.messages:
            if match(message):
                return message
    raise AssertionError("message iterator ended")


def on(topic: str, payload: bytes | None = None) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: m.topic.value == topic and (payload is None or m.payload == payload)


@pytest_asyncio.fixture
async def journal(tmp_path: Path) -> AsyncIterator[AsyncJournal]:
    async with await AsyncJournal.open(tmp_path / "data", gateway_id=GW) as j:
        yield j


def broker_cfg(mosquitto: Mosquitto) -> BrokerConfig:
    return BrokerConfig(url=mosquitto.url, keepalive_s=10)


@pytest.mark.parametrize("how", ["stop", "cancel"])
@pytest.mark.asyncio
async def test_online_is_retained_and_a_clean_exit_publishes_offline(
    mosquitto: Mosquitto, journal: AsyncJournal, how: str
) -> None:
    """bridge/state is retained online while connected; stop() or cancellation says offline."""
    bridge = MqttBridge(
        broker_cfg(mosquitto), gateway_id=GW, client_id="c1", outbox=journal, backoff=fast_backoff()
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    async with asyncio.timeout(WAIT_S):
        await bridge.wait_state(BridgeState.ONLINE, connections=1)
    async with observer(mosquitto.port, STATE_TOPIC) as obs:
        first = await receive(obs, on(STATE_TOPIC))
        assert first.payload == b'{"state":"online"}'
        assert first.retain
        if how == "stop":
            bridge.stop()
            await task
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        offline = await receive(obs, on(STATE_TOPIC))
        assert offline.payload == b'{"state":"offline"}'
        assert offline.retain
    async with observer(mosquitto.port, STATE_TOPIC) as late:
        assert (await receive(late, on(STATE_TOPIC))).payload == b'{"state":"offline"}'


@pytest.mark.asyncio
async def test_last_will_announces_offline_when_the_connection_dies_then_it_reconnects(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """Killing the bridge's TCP connection (no DISCONNECT) makes the broker publish the
    retained offline will at once; the bridge then reconnects and says online again."""
    async with (
        running_bridge(broker_cfg(mosquitto), journal) as (bridge, _),
        observer(mosquitto.port, STATE_TOPIC) as obs,
    ):
        assert (await receive(obs, on(STATE_TOPIC))).payload == b'{"state":"online"}'
        assert bridge._client is not None
        sock = bridge._client._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # abnormal loss: the broker sees EOF, no DISCONNECT
        will = await receive(obs, on(STATE_TOPIC))
        assert will.payload == b'{"state":"offline"}'
        assert will.retain
        back = await receive(obs, on(STATE_TOPIC))
        assert back.payload == b'{"state":"online"}'
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=2)


@pytest.mark.asyncio
async def test_client_socket_has_tcp_nodelay(mosquitto: Mosquitto, journal: AsyncJournal) -> None:
    """Regression: the connected socket has TCP_NODELAY set (results are latency-bound)."""
    async with running_bridge(broker_cfg(mosquitto), journal) as (bridge, _):
        assert bridge.tcp_nodelay() is True
        assert bridge._client is not None
        raw = bridge._client._client.socket()
        assert isinstance(raw, socket.socket)
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert bridge.tcp_nodelay() is None


@pytest.mark.asyncio
async def test_retained_state_is_republished_after_a_broker_restart(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """A broker that lost its retained store gets the latest state again on reconnect, and
    a state set during the outage is the one published."""
    topic = f"infusiond/{GW}/pump/pump-1/state"
    async with running_bridge(broker_cfg(mosquitto), journal) as (bridge, _):
        bridge.publish_retained(topic, b'{"v":1}')
        async with observer(mosquitto.port, topic) as obs:
            assert (await receive(obs, on(topic))).payload == b'{"v":1}'
        mosquitto.stop()
        (mosquitto.workdir / "mosquitto.db").unlink(missing_ok=True)  # forget retained msgs
        bridge.publish_retained(topic, b'{"v":2}')
        bridge.publish_retained(topic, b'{"v":3}')  # latest wins
        mosquitto.start()
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=2)
        async with observer(mosquitto.port, topic, STATE_TOPIC) as obs:
            got = await receive(obs, on(topic))
            assert got.payload == b'{"v":3}'
            assert got.retain
            assert (await receive(obs, on(STATE_TOPIC))).payload == b'{"state":"online"}'


@pytest.mark.asyncio
async def test_events_written_during_an_outage_are_published_after_it_gapless(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """Events recorded while the gateway's link to the broker is cut wait in the outbox and are
    published in seq order once it is back: a subscriber sees 1..N with no gap and no loss,
    and the broker announced the outage with the last will."""
    events = f"infusiond/{GW}/pump/+/event"
    seen: list[int] = []
    async with (
        cuttable_link(mosquitto.port) as link,
        observer(mosquitto.port, events) as obs,
        observer(mosquitto.port, STATE_TOPIC) as state,
    ):
        cfg = BrokerConfig(url=link.url, keepalive_s=10)
        async with running_bridge(cfg, journal) as (bridge, _):
            assert (await receive(state, on(STATE_TOPIC))).payload == b'{"state":"online"}'
            for i in range(5):
                await journal.record_event(f"pump-{i % 2}", rate_changed(i, i + 1))
            await link.cut()
            assert (await receive(state, on(STATE_TOPIC))).payload == b'{"state":"offline"}'
            async with asyncio.timeout(WAIT_S):
                await bridge.wait_state(BridgeState.BACKOFF)
            for i in range(5, 40):
                await journal.record_event(f"pump-{i % 2}", rate_changed(i, i + 1))
            await link.restore()
            async with asyncio.timeout(WAIT_S):
                async for message in obs.messages:
                    body = json.loads(message.payload)
                    assert body["schema"] == "infusiond.pump.event/1"
                    assert body["session"] == journal.session
                    seen.append(body["seq"])
                    if body["seq"] == 40:
                        break
            async with asyncio.timeout(WAIT_S):  # the ack follows the PUBACK: poll its effect
                while await journal.outbox_pending():
                    await asyncio.sleep(0.01)
    # Events 1-5 may have been in flight when the link was cut: at-least-once, same seq.
    assert sorted(set(seen)) == list(range(1, 41))
    assert seen[-35:] == list(range(6, 41))


@pytest.mark.asyncio
async def test_response_topic_and_correlation_data_are_honoured(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """A command's MQTT v5 response topic and correlation data reach the bridge, and the
    result goes to the standard result topic and to the response topic with that data."""
    cmd_topic = f"infusiond/{GW}/pump/pump-1/command"
    result_topic = f"infusiond/{GW}/pump/pump-1/command/result"
    async with running_bridge(broker_cfg(mosquitto), journal) as (bridge, _):
        commands = bridge.commands()
        async with observer(mosquitto.port, "app/replies/#", result_topic) as app:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "app/replies/42"
            props.CorrelationData = b"\x00corr"
            await app.publish(cmd_topic, b'{"id":"c-1"}', qos=1, properties=props)
            async with asyncio.timeout(WAIT_S):
                incoming = await anext(commands)
            assert incoming.pump_id == "pump-1"
            assert incoming.payload == b'{"id":"c-1"}'
            assert incoming.retain is False
            assert incoming.response_topic == "app/replies/42"
            assert incoming.correlation_data == b"\x00corr"
            bridge.send_result(
                "pump-1",
                b'{"phase":"accepted"}',
                response_topic=incoming.response_topic,
                correlation_data=incoming.correlation_data,
            )
            got = {}
            for _ in range(2):
                message = await receive(app)
                got[message.topic.value] = message
            assert set(got) == {"app/replies/42", result_topic}
            for message in got.values():
                assert message.payload == b'{"phase":"accepted"}'
                assert message.properties is not None
                assert message.properties.CorrelationData == b"\x00corr"


@pytest.mark.asyncio
async def test_response_topics_are_honoured_only_outside_the_infusiond_tree(
    journal: AsyncJournal,
) -> None:
    """A response topic is usable only outside infusiond/ (any gateway's state, event, bridge,
    vitals or command topics are refused), without wildcards, $ or NUL, at most 256 bytes;
    each refusal says why."""
    bridge = MqttBridge(BrokerConfig(), gateway_id=GW, client_id="x", outbox=journal)
    for good in ("app/replies/1", "infusiond-replies/titration-app/7", "infusiondx/a"):
        assert bridge.response_topic_problem(good) is None, good
    refused = {
        "": "bytes",
        "x" * 257: "bytes",
        "é" * 129: "bytes",  # 258 bytes of UTF-8
        "a/+/b": "wildcard",
        "a/#": "wildcard",
        "a/\x00": "NUL",
        "$SYS/x": "$",
        "reply/\ud800": "UTF-8",
        f"infusiond/{GW}/pump/p/command": "infusiond/",
        f"infusiond/{GW}/pump/pump-1/state": "infusiond/",
        f"infusiond/{GW}/pump/pump-1/event": "infusiond/",
        f"infusiond/{GW}/bridge/state": "infusiond/",
        f"infusiond/{GW}/vitals/bed-1/state": "infusiond/",
        "infusiond/other-gw/pump/pump-1/command": "infusiond/",
        "infusiond": "infusiond/",
    }
    for bad, why in refused.items():
        problem = bridge.response_topic_problem(bad)
        assert problem is not None, bad
        assert why in problem, (bad, problem)


@pytest.mark.asyncio
async def test_a_response_topic_into_the_gateway_tree_is_ignored_and_the_answer_says_so(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """Regression: a command whose response topic is the gateway's own pump state (or another
    gateway's command topic) gets its result on .../command/result only, with the user property
    response-topic-ignored naming why; nothing is published on the abused topic. Correlation
    data over 1 KiB is not copied onto results (correlation-data-ignored says so)."""
    result_topic = f"infusiond/{GW}/pump/pump-1/command/result"
    abused = [f"infusiond/{GW}/pump/pump-1/state", "infusiond/other-gw/pump/pump-1/command"]
    async with (
        running_bridge(broker_cfg(mosquitto), journal) as (bridge, _),
        observer(mosquitto.port, "infusiond/#") as app,
    ):
        for target in abused:
            bridge.send_result("pump-1", b'{"phase":"rejected"}', response_topic=target)
        bridge.send_result("pump-1", b'{"phase":"last"}', correlation_data=b"c" * 1025)
        got = []
        async with asyncio.timeout(WAIT_S):
            async for message in app.messages:
                if message.topic.value != STATE_TOPIC:  # the bridge's own, retained
                    got.append(message)
                if message.payload == b'{"phase":"last"}':
                    break
        assert [m.topic.value for m in got] == [result_topic] * 3
        for message in got[:2]:
            assert message.properties is not None
            (name, why), *_ = message.properties.UserProperty
            assert name == "response-topic-ignored"
            assert "under infusiond/" in why
        last = got[2].properties
        assert last is not None
        assert not hasattr(last, "CorrelationData")  # 1,025 bytes: not copied onto results
        assert last.UserProperty == [("correlation-data-ignored", "longer than 1024 bytes")]
        assert bridge.stats.response_topics_ignored == 2


@pytest.mark.asyncio
async def test_retained_commands_arrive_flagged_retained(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """A command retained at the broker before we connect, and a live retained one, both
    arrive with retain=True (retain-as-published); a normal one with retain=False."""
    cmd_topic = f"infusiond/{GW}/pump/pump-2/command"
    async with observer(mosquitto.port) as app:
        await app.publish(cmd_topic, b"stale", qos=1, retain=True)
        async with running_bridge(broker_cfg(mosquitto), journal) as (bridge, _):
            commands = bridge.commands()
            async with asyncio.timeout(WAIT_S):
                stored = await anext(commands)
                assert (stored.payload, stored.retain) == (b"stale", True)
                await app.publish(cmd_topic, b"live", qos=1)
                live = await anext(commands)
                assert (live.payload, live.retain) == (b"live", False)
                await app.publish(cmd_topic, b"live-retained", qos=1, retain=True)
                live_retained = await anext(commands)
                assert (live_retained.payload, live_retained.retain) == (b"live-retained", True)


@pytest.mark.asyncio
async def test_oversized_commands_still_arrive_so_they_can_be_answered_too_large(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """A 20 KiB command is delivered (under the 256 KiB packet cap) for a too_large answer."""
    async with running_bridge(broker_cfg(mosquitto), journal) as (bridge, _):
        commands = bridge.commands()
        async with observer(mosquitto.port) as app:
            await app.publish(f"infusiond/{GW}/pump/p/command", b"x" * 20_480, qos=1)
            async with asyncio.timeout(WAIT_S):
                incoming = await anext(commands)
        assert len(incoming.payload) == 20_480


@pytest.mark.asyncio
async def test_username_and_password_from_config(tmp_path: Path, journal: AsyncJournal) -> None:
    """With a password file on the broker, a wrong password keeps the bridge backing off
    (error recorded, password never in it); the right one brings it online."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "gw-user", "right-pw"],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    broker = Mosquitto(tmp_path / "auth", extra_conf=[*STAY_USER, f"password_file {passwd}"])
    broker.start()
    try:
        wrong = BrokerConfig(url=broker.url, username="gw-user", password=SecretStr("wrong-pw"))
        async with running_bridge(wrong, journal, wait_online=False) as (bridge, _):
            async with asyncio.timeout(WAIT_S):
                await bridge.wait_state(BridgeState.BACKOFF)
            assert bridge.stats.connections == 0
            assert bridge.stats.last_error is not None
            assert "wrong-pw" not in bridge.stats.last_error
        right = BrokerConfig(url=broker.url, username="gw-user", password=SecretStr("right-pw"))
        async with running_bridge(right, journal) as (bridge, _):
            assert bridge.stats.connections == 1
    finally:
        broker.stop()


def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_crt = directory / "ca.key", directory / "ca.pem"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca_crt,
            "-days",
            "1",
            "-subj",
            "/CN=infusiond-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            crt,
            "-days",
            "1",
            "-extfile",
            ext,
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return ca_crt, crt, key


@pytest.mark.asyncio
async def test_tls_connection_with_the_configured_ca(tmp_path: Path, journal: AsyncJournal) -> None:
    """mqtts:// with the CA from config connects to a TLS listener, TCP_NODELAY still set."""
    ca, crt, key = _make_tls_files(tmp_path)
    broker = Mosquitto(
        tmp_path / "tls",
        extra_conf=STAY_USER,
        listener_conf=[f"cafile {ca}", f"certfile {crt}", f"keyfile {key}"],
    )
    broker.start()
    try:
        cfg = BrokerConfig(url=f"mqtts://127.0.0.1:{broker.port}", tls=TlsConfig(ca_file=ca))
        async with running_bridge(cfg, journal) as (bridge, _):
            assert bridge.tcp_nodelay() is True
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_results_sent_during_an_outage_are_published_after_it_in_order(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """Command results queued while the link is down go out, in order, once it is back."""
    result_topic = f"infusiond/{GW}/pump/pump-1/command/result"
    async with (
        cuttable_link(mosquitto.port) as link,
        observer(mosquitto.port, result_topic) as obs,
        running_bridge(BrokerConfig(url=link.url), journal) as (bridge, _),
    ):
        await link.cut()
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.BACKOFF)
        for phase in ("accepted", "applied"):
            bridge.send_result("pump-1", json.dumps({"phase": phase}).encode())
        await link.restore()
        first = await receive(obs, on(result_topic))
        second = await receive(obs, on(result_topic))
        assert [json.loads(m.payload)["phase"] for m in (first, second)] == ["accepted", "applied"]


@pytest.mark.asyncio
async def test_stop_while_the_broker_is_unreachable_returns_promptly(
    journal: AsyncJournal,
) -> None:
    """With no broker, the bridge backs off; stop() ends run() without waiting the delay."""
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bridge = MqttBridge(
        BrokerConfig(url=f"mqtt://127.0.0.1:{port}"),
        gateway_id=GW,
        client_id="x",
        outbox=journal,
        backoff=Backoff(initial_s=30, maximum_s=30),
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    async with asyncio.timeout(WAIT_S):
        await bridge.wait_state(BridgeState.BACKOFF)
        assert bridge.stats.last_error is not None
        bridge.stop()
        await task
    assert bridge.state is BridgeState.STOPPED


@pytest.mark.asyncio
async def test_events_left_in_the_outbox_by_a_previous_run_are_published_on_start(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Events journaled before a daemon restart but never acknowledged are published, in
    order, by the next run's bridge, and seq continues after them."""
    data_dir = tmp_path / "restart"
    async with await AsyncJournal.open(data_dir, gateway_id=GW) as first_run:
        for i in range(3):
            await first_run.record_event("pump-1", started(i + 1))
    events = f"infusiond/{GW}/pump/+/event"
    async with (
        await AsyncJournal.open(data_dir, gateway_id=GW) as second_run,
        observer(mosquitto.port, events) as obs,
        running_bridge(broker_cfg(mosquitto), second_run),
    ):
        await second_run.record_event("pump-1", stopped())
        seqs = [json.loads((await receive(obs)).payload)["seq"] for _ in range(4)]
        assert seqs == [1, 2, 3, 4]


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): connections stay open, nothing is answered."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


@pytest.mark.asyncio
async def test_a_frozen_broker_ends_only_the_connection_and_the_bridge_comes_back(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """Regression: with the broker SIGSTOPped while retained states are being published, the
    PUBACK waits time out together (an exception group of timeouts), and reconnect attempts
    get no CONNACK; run() survives all of it. After SIGCONT the bridge is online again:
    bridge/state is retained online and each retained topic holds its latest payload."""
    topics = [f"infusiond/{GW}/pump/pump-{i}/state" for i in range(4)]
    bridge = MqttBridge(
        broker_cfg(mosquitto),
        gateway_id=GW,
        client_id="freeze",
        outbox=journal,
        backoff=fast_backoff(),
        timeout_s=1.0,
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    try:
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=1)
        with frozen(mosquitto):
            for topic in topics:  # several PUBLISHes in flight: their timeouts come as a group
                bridge.publish_retained(topic, b'{"v":1}')
            async with asyncio.timeout(WAIT_S):
                await bridge.wait_state(BridgeState.BACKOFF)  # the first fault: a timeout group
                await bridge.wait_state(BridgeState.CONNECTING)
                await bridge.wait_state(BridgeState.BACKOFF)  # a reconnect got no CONNACK
            assert not task.done()
            assert bridge.stats.link_faults >= 2
            assert bridge.stats.last_error is not None
            for topic in topics:
                bridge.publish_retained(topic, b'{"v":2}')  # latest wins after the freeze
        async with asyncio.timeout(3 * WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=2)
        async with observer(mosquitto.port, STATE_TOPIC, *topics) as obs:
            latest: dict[str, bytes] = {}
            async with asyncio.timeout(3 * WAIT_S):
                async for message in obs.messages:  # stale attempts may bounce it: eventually
                    latest[message.topic.value] = message.payload
                    if len(latest) == len(topics) + 1 and set(latest.values()) == {
                        b'{"v":2}',
                        b'{"state":"online"}',
                    }:
                        break
        assert not task.done()
    finally:
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task


@pytest.mark.asyncio
async def test_stop_while_the_broker_is_frozen_returns_without_waiting_for_timeouts(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """With the broker SIGSTOPped, stop() tries to say offline for at most 2 s and leaves
    (paho closes its side after DISCONNECT): run() returns within 5 s, not after the 10 s
    PUBACK/DISCONNECT timeouts."""
    bridge = MqttBridge(
        broker_cfg(mosquitto), gateway_id=GW, client_id="frozen-stop", outbox=journal
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    async with asyncio.timeout(WAIT_S):
        await bridge.wait_state(BridgeState.ONLINE, connections=1)
    with frozen(mosquitto):
        loop = asyncio.get_running_loop()
        started = loop.time()
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task
        assert loop.time() - started < 5.0
    assert bridge.state is BridgeState.STOPPED


@pytest.mark.asyncio
async def test_the_command_queue_is_bounded_and_drops_are_counted(
    mosquitto: Mosquitto, journal: AsyncJournal
) -> None:
    """With nobody consuming, 50 commands against a queue of 10: the first 10 are kept in
    order, the other 40 are dropped and counted; memory does not grow with the backlog."""
    bridge = MqttBridge(
        broker_cfg(mosquitto),
        gateway_id=GW,
        client_id="bounded",
        outbox=journal,
        backoff=fast_backoff(),
        command_queue_size=10,
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    try:
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=1)
        async with observer(mosquitto.port) as app:
            for i in range(50):
                await app.publish(f"infusiond/{GW}/pump/p/command", f"{i}".encode(), qos=1)
            async with asyncio.timeout(WAIT_S):  # a counter has no event: poll it
                while bridge.stats.commands_dropped < 40:
                    await asyncio.sleep(0.01)
        commands = bridge.commands()
        kept = [(await anext(commands)).payload for _ in range(10)]
        assert kept == [f"{i}".encode() for i in range(10)]
        assert bridge.stats.commands_dropped == 40
    finally:
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("garbage instead of CONNACK", b"\x00\xff\xff\xff\xff\x7f"),
        ("CONNACK then a reserved packet type", b"\x20\x03\x00\x00\x00" + b"\x00\x00"),
    ],
)
@pytest.mark.asyncio
async def test_a_broker_speaking_garbage_costs_a_retry_never_the_bridge(
    journal: AsyncJournal, name: str, reply: bytes
) -> None:
    """A peer on the broker's port that answers CONNECT with garbage (or a CONNACK followed by
    a packet of a reserved type): each attempt ends as a link fault and the bridge backs off
    and tries again; run() keeps running until stop()."""
    attempts = 0

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.read(1024)  # the CONNECT
        writer.write(reply)
        await writer.drain()
        await reader.read(1024)  # hold the connection until the client gives up
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bridge = MqttBridge(
        BrokerConfig(url=f"mqtt://127.0.0.1:{port}"),
        gateway_id=GW,
        client_id="garbage",
        outbox=journal,
        backoff=fast_backoff(),
        timeout_s=0.5,
    )
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    try:
        async with asyncio.timeout(WAIT_S):
            for _ in range(2):
                await bridge.wait_state(BridgeState.BACKOFF)
                await bridge.wait_state(BridgeState.CONNECTING)
        assert not task.done(), name
        assert attempts >= 2
        assert bridge.stats.link_faults >= 2
    finally:
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_broker_that_drops_each_connection_at_once_gets_growing_backoff(
    journal: AsyncJournal,
) -> None:
    """A peer that accepts (CONNACK, SUBACK, PUBACK) and then closes at once: the bridge comes
    online every time, but since no connection lasts, its backoff keeps growing (0.05, 0.1,
    0.2, 0.4, 0.4 s without jitter): six connections take over a second, not a storm."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
        await reader.read(1024)  # SUBSCRIBE (packet id 1)
        writer.write(b"\x90\x04\x00\x01\x00\x01")  # SUBACK, QoS 1 granted
        await reader.read(1024)  # PUBLISH bridge/state online (packet id 2)
        writer.write(b"\x40\x02\x00\x02")  # PUBACK
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bridge = MqttBridge(
        BrokerConfig(url=f"mqtt://127.0.0.1:{port}"),
        gateway_id=GW,
        client_id="flapping",
        outbox=journal,
        backoff=Backoff(initial_s=0.05, maximum_s=0.4, jitter=0),
        timeout_s=2.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(bridge.run(), name="bridge-under-test")
    try:
        async with asyncio.timeout(WAIT_S):
            await bridge.wait_state(BridgeState.ONLINE, connections=6)
        assert loop.time() - started >= 0.05 + 0.1 + 0.2 + 0.4 + 0.4 - 0.05
        assert not task.done()
    finally:
        bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task
        server.close()
        await server.wait_closed()


# -- an outbox written before the journal stopped formatting envelopes ----------------------

#: the outbox table as infusiond.journal/1 files had it until then (the encoded envelope and
#: its topic, ready to publish)
OLD_OUTBOX = """
DROP TABLE outbox;
CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL);
"""
OLD_TS = "2026-11-26T17:18:00.123Z"


def old_events() -> list[dict[str, object]]:
    return [
        {"type": "delivery_started", "rate": {"value": 52.5, "unit": "mL/h"}, "pump_id": "pump-1"},
        {"type": "alarm_raised", "alarm": {"code": "near_end", "message": "Noradrénaline"}},
        {"type": "rate_changed", "to": {"dose": {"value": 1e-07, "unit": "ug/kg/min"}}, "n": 3},
    ]


def old_outbox_rows(session: str) -> list[tuple[int, str, bytes]]:
    """The rows the previous version wrote for :func:`old_events`, spelt out byte for byte."""
    head = f'"gateway":"{GW}","schema":"infusiond.pump.event/1"'
    tail = f'"session":"{session}","ts":"{OLD_TS}"'
    datas = [
        '{"pump_id":"pump-1","rate":{"unit":"mL/h","value":52.5},"type":"delivery_started"}',
        '{"alarm":{"code":"near_end","message":"Noradrénaline"},"type":"alarm_raised"}',
        '{"n":3,"to":{"dose":{"unit":"ug/kg/min","value":1e-07}},"type":"rate_changed"}',
    ]
    pumps = ["pump-1", "pump-2", "pump-1"]
    return [
        (
            seq,
            f"infusiond/{GW}/pump/{pump}/event",
            f'{{"data":{data},{head},"seq":{seq},{tail}}}'.encode(),
        )
        for seq, (pump, data) in enumerate(zip(pumps, datas, strict=True), start=1)
    ]


def write_old_format_journal(data_dir: Path) -> str:
    """A journal as the previous version left it: three events journaled, none acknowledged,
    the outbox holding their envelopes. Returns its session."""
    journal = Journal.open(data_dir, gateway_id=GW)
    try:
        with journal.transaction():
            for pump, data in zip(["pump-1", "pump-2", "pump-1"], old_events(), strict=True):
                journal.record_event(pump, RawEvent(data), ts=parse_ts(OLD_TS))
        session = journal.session
    finally:
        journal.close()
    conn = sqlite3.connect(journal_path(data_dir))
    with conn:
        conn.executescript(OLD_OUTBOX)
        conn.executemany(
            "INSERT INTO outbox (seq, topic, payload) VALUES (?, ?, ?)", old_outbox_rows(session)
        )
    conn.close()
    return session


@pytest.mark.asyncio
async def test_an_old_format_outbox_is_migrated_and_published_byte_for_byte(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Pending events of an outbox written before the journal stopped formatting envelopes
    are published, in seq order, as exactly the bytes that version would have published; the
    chain still verifies and seq goes on after them."""
    data_dir = tmp_path / "old"
    session = write_old_format_journal(data_dir)
    expected = [(topic, payload) for _, topic, payload in old_outbox_rows(session)]
    async with (
        await AsyncJournal.open(data_dir, gateway_id=GW) as journal,
        observer(mosquitto.port, f"infusiond/{GW}/pump/+/event") as obs,
        running_bridge(broker_cfg(mosquitto), journal),
    ):
        assert (await journal.verify()).ok
        assert journal.session == session
        await journal.record_event("pump-2", stopped())
        got = [await receive(obs) for _ in range(4)]
        assert [(m.topic.value, m.payload) for m in got[:3]] == expected
        assert json.loads(got[3].payload)["seq"] == 4


def test_an_old_outbox_row_that_would_not_publish_the_same_bytes_refuses_the_migration(
    tmp_path: Path,
) -> None:
    """A row whose envelope cannot be rebuilt byte for byte (here: a key the envelope does not
    have) stops the open with the row named, and the file keeps its old outbox untouched."""
    data_dir = tmp_path / "old"
    session = write_old_format_journal(data_dir)
    conn = sqlite3.connect(journal_path(data_dir))
    with conn:
        conn.execute(
            "UPDATE outbox SET payload = ? WHERE seq = 2",
            (b'{"extra":1,' + old_outbox_rows(session)[1][2][1:],),
        )
    conn.close()
    with pytest.raises(JournalError, match="outbox event 2 cannot be migrated"):
        Journal.open(data_dir, gateway_id=GW).close()
    conn = sqlite3.connect(journal_path(data_dir))
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(outbox)")]
        count = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        conn.close()
    assert (columns, count) == (["seq", "topic", "payload"], 3)
