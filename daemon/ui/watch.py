"""``infusiond watch``: a live terminal view of every pump and bed, from the MQTT topics alone.

It subscribes to ``infusiond/<gateway>/#`` (every gateway by default) and shows the bridge
state, one line per pump (``pump/<id>/state``), one per bed (``vitals/<bed>/state``) and the
latest events and command results; it needs nothing from the daemon but the public MQTT API
(docs/asyncapi.yaml), so it works against any gateway. Fits an 80x24 terminal for the demo bedside.

:class:`WatchModel` (pure: topic + payload in, no I/O) and :func:`render` (model + ``now`` in,
a rich renderable out) are separate from the MQTT loop so that tests feed payloads directly.
``--once`` prints one frame after the retained state has arrived and exits (for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
from rich.console import Console, RenderableType
from rich.live import Live

from daemon.base.payload import JsonObject
from daemon.ui.watch_state import BedView, PumpView
from daemon.ui.watch_view import event_line, render, result_line
from drivers.backoff import Backoff
from drivers.clock import utc_now

__all__ = ["WatchModel", "collect", "parse_broker", "render", "run"]

MAX_PAYLOAD = 64 * 1024
EVENT_LINES = 6
ONCE_IDLE_S = 0.5  # --once: print when no message arrived for this long...
ONCE_MAX_S = 5.0  # ...or after this long at most
ONCE_CONNECT_S = 10.0  # --once: the broker must answer within this (connect + retained burst)
HISTORY_TIMEOUT_S = 5.0


@dataclass
class GatewayView:
    """What the bridge topics say about one gateway."""

    state: str = "?"
    session: str | None = None
    seq: int | None = None
    library: str | None = None


@dataclass
class WatchModel:
    """The latest state seen on the topic tree, keyed by (gateway, id)."""

    gateways: dict[str, GatewayView] = field(default_factory=dict)
    pumps: dict[tuple[str, str], PumpView] = field(default_factory=dict)
    beds: dict[tuple[str, str], BedView] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENT_LINES))
    #: the envelope ``ts`` of each pump's latest state (what "last known" refers to)
    seen_at: dict[tuple[str, str], str] = field(default_factory=dict)
    #: command ids whose rejection is already listed (an event and a result say it twice)
    rejected: deque[str] = field(default_factory=lambda: deque(maxlen=4 * EVENT_LINES))
    problems: int = 0
    last_problem: str = ""
    messages: int = 0

    def apply(self, topic: str, payload: bytes) -> None:
        """Take one MQTT message; bad topics/payloads are counted, never raised."""
        self.messages += 1
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != "infusiond":
            self._problem(f"{topic}: not an infusiond topic")
            return
        gateway, rest = parts[1], parts[2:]
        if len(payload) > MAX_PAYLOAD:
            self._problem(f"{topic}: payload over {MAX_PAYLOAD} bytes")
            return
        if rest[:1] == ["pump"] and rest[2:] == ["command"]:
            return  # commands on their way in; their results are shown
        if rest in (["bridge", "health"], ["pump", rest[1], "availability"]):
            return  # plain-text availability and the health figures: the states say as much
        try:
            body = json.loads(payload) if payload else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._problem(f"{topic}: bad JSON ({exc})")
            return
        gw = self.gateways.setdefault(gateway, GatewayView())
        if rest == ["bridge", "state"]:
            gw.state = str(body.get("state", "?")) if isinstance(body, dict) else "?"
            return
        data = self._data(topic, body, gw)
        if data is None:
            return
        if rest == ["bridge", "info"]:
            lib = data.get("library")
            if isinstance(lib, dict):
                gw.library = f"{lib.get('name', '?')} {lib.get('version', '')}".strip()
        elif len(rest) == 3 and rest[0] == "pump" and rest[2] == "state":
            self.pumps[(gateway, rest[1])] = PumpView.from_json(data)
            ts = body.get("ts") if isinstance(body, dict) else None
            if isinstance(ts, str):
                self.seen_at[(gateway, rest[1])] = ts
        elif len(rest) == 3 and rest[0] == "pump" and rest[2] == "event":
            self.add_event(gateway, rest[1], data, self._ts(body))
        elif rest[0] == "pump" and rest[2:] == ["command", "result"]:
            if self._first_rejection(data, "id", "phase"):
                self.events.append(result_line(gateway, rest[1], data, self._ts(body)))
        elif len(rest) == 3 and rest[0] == "vitals" and rest[2] == "state":
            self.beds[(gateway, rest[1])] = BedView.from_json(data)
        else:
            self._problem(f"{topic}: unknown topic")

    def _data(self, topic: str, body: object, gw: GatewayView) -> JsonObject | None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            self._problem(f"{topic}: no envelope with a data object")
            return None
        if isinstance(body.get("session"), str):
            gw.session = body["session"]
        if isinstance(body.get("seq"), int):
            gw.seq = max(gw.seq or 0, body["seq"])
        data: JsonObject = body["data"]
        return data

    def add_event(self, gateway: str, pump: str, data: Mapping[str, object], ts: str) -> None:
        """One ``pump.event`` line (live, or from the history API at start)."""
        if data.get("type") != "command_rejected" or self._first_rejection(data, "command_id"):
            self.events.append(event_line(gateway, pump, data, ts))

    def add_history(self, document: Mapping[str, object]) -> int:
        """The events of an ``/api/events`` answer, oldest first; how many were taken."""
        gateway = document.get("gateway")
        data = document.get("data")
        items = data.get("events") if isinstance(data, Mapping) else None
        if not isinstance(gateway, str) or not isinstance(items, list):
            self._problem("history: not an infusiond.api.events/1 document")
            return 0
        taken = 0
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("data"), Mapping):
                pump = str(item.get("pump_id") or "?")
                self.add_event(gateway, pump, item["data"], self._ts(item))
                taken += 1
        return taken

    def _first_rejection(
        self, data: Mapping[str, object], id_key: str, phase_key: str = ""
    ) -> bool:
        """False for the second report of one command's rejection (event and result)."""
        if phase_key and data.get(phase_key) != "rejected":
            return True
        command_id = data.get(id_key)
        if not isinstance(command_id, str):
            return True
        if command_id in self.rejected:
            return False
        self.rejected.append(command_id)
        return True

    @staticmethod
    def _ts(body: object) -> str:
        ts = body.get("ts") if isinstance(body, dict) else None
        return ts[11:19] if isinstance(ts, str) and len(ts) >= 19 else "--:--:--"

    def _problem(self, text: str) -> None:
        self.problems += 1
        self.last_problem = text[:120]


def parse_broker(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` -> (host, port); ValueError names the problem."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt":
        raise ValueError(f"--broker {url!r}: scheme must be mqtt://")
    if not parts.hostname:
        raise ValueError(f"--broker {url!r}: host is missing")
    try:
        return parts.hostname, parts.port or 1883
    except ValueError:
        raise ValueError(f"--broker {url!r}: port is not a number") from None


async def collect(
    model: WatchModel,
    host: str,
    port: int,
    gateway: str,
    *,
    on_message: Callable[[], None] | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Subscribe and feed ``model`` until cancelled; reconnects with capped backoff."""
    backoff = backoff or Backoff(initial_s=0.5, maximum_s=10.0)
    while True:
        try:
            # MQTT 3.1.1 on purpose: watch only reads, and the demo's embedded broker (amqtt)
            # speaks nothing newer. An explicit id: amqtt would merge empty-id sessions.
            async with aiomqtt.Client(
                host,
                port,
                protocol=aiomqtt.ProtocolVersion.V311,
                identifier=f"infusiond-watch-{os.getpid()}-{secrets.token_hex(3)}",
            ) as client:
                backoff.reset()
                await client.subscribe(f"infusiond/{gateway}/#", qos=1)
                async for message in client.messages:
                    payload = message.payload
                    raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
                    model.apply(message.topic.value, raw)
                    if on_message is not None:
                        on_message()
        except aiomqtt.MqttError as exc:
            model.last_problem = f"broker: {exc}"
            await asyncio.sleep(backoff.next_delay())


async def load_history(model: WatchModel, url: str) -> None:
    """Fill the recent lines from the daemon's ``/api/events`` (the last 30 min) at start; a
    failure is shown as the last problem, never fatal (live events still arrive)."""
    query = f"{url.rstrip('/')}/api/events?since=30m&limit={EVENT_LINES}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HISTORY_TIMEOUT_S)) as http,
            http.get(query) as response,
        ):
            if response.status != 200:
                model.last_problem = f"history: {query} answered {response.status}"
                return
            document = json.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        model.last_problem = f"history: {query}: {exc or type(exc).__name__}"
        return
    if isinstance(document, dict):
        model.add_history(document)


async def _live(model: WatchModel, host: str, port: int, args: argparse.Namespace) -> int:
    console = Console()
    broker = args.broker

    def frame() -> RenderableType:
        return render(model, utc_now(), broker, width=console.width)

    if getattr(args, "http", None):
        await load_history(model, args.http)
    with Live(frame(), console=console, auto_refresh=False) as live:

        def refresh() -> None:
            live.update(frame(), refresh=True)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                collect(model, host, port, args.gateway, on_message=refresh), name="watch-mqtt"
            )
            while True:  # ages tick even when nothing arrives
                await asyncio.sleep(1.0)
                refresh()


async def _once(model: WatchModel, host: str, port: int, args: argparse.Namespace) -> int:
    """One frame of the retained state; 1 (with a message) when the broker cannot be reached
    or no pump state arrived, so a script never mistakes "nothing" for "all well"."""
    if getattr(args, "http", None):
        await load_history(model, args.http)
    arrived = asyncio.Event()
    try:
        async with (
            asyncio.timeout(ONCE_CONNECT_S),
            aiomqtt.Client(
                host,
                port,
                protocol=aiomqtt.ProtocolVersion.V311,
                identifier=f"infusiond-watch-{os.getpid()}-{secrets.token_hex(3)}",
            ) as client,
        ):
            await client.subscribe(f"infusiond/{args.gateway}/#", qos=1)
            reader = asyncio.create_task(_feed(model, client, arrived.set), name="watch-once")
            try:
                await _until_quiet(arrived)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
    except (aiomqtt.MqttError, TimeoutError) as exc:
        reason = str(exc) or "no answer within the timeout"
        sys.stderr.write(f"infusiond watch: cannot reach the broker at {args.broker}: {reason}\n")
        return 1
    console = Console()  # the terminal's width; 80 when not a terminal
    console.print(render(model, utc_now(), args.broker, width=console.width))
    if not model.pumps:
        sys.stderr.write(
            f"infusiond watch: no pump state on infusiond/{args.gateway}/# at {args.broker} "
            f"within {ONCE_MAX_S:g} s: is the daemon running, and is --gateway right?\n"
        )
        return 1
    return 0


async def _feed(model: WatchModel, client: aiomqtt.Client, arrived: Callable[[], None]) -> None:
    async for message in client.messages:
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
        model.apply(message.topic.value, raw)
        arrived()


async def _until_quiet(arrived: asyncio.Event) -> None:
    """Return once no message came for ONCE_IDLE_S (the retained burst is over), or after
    ONCE_MAX_S at most."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ONCE_MAX_S):
            while True:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), ONCE_IDLE_S)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond watch``."""
    try:
        host, port = parse_broker(args.broker)
    except ValueError as exc:
        sys.stderr.write(f"infusiond watch: {exc}\n")
        return 2
    http = getattr(args, "http", None)
    if http is not None and not http.startswith(("http://", "https://")):
        sys.stderr.write(f"infusiond watch: --http {http!r}: must start with http:// or https://\n")
        return 2
    model = WatchModel()
    runner = _once if getattr(args, "once", False) else _live
    return asyncio.run(runner(model, host, port, args))
