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
import json
import os
import secrets
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from drivers.backoff import Backoff

MAX_PAYLOAD = 64 * 1024
EVENT_LINES = 6
MAP_RANGE = (65.0, 85.0)
ONCE_IDLE_S = 0.5  # --once: print when no message arrived for this long...
ONCE_MAX_S = 5.0  # ...or after this long at most


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
    pumps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    beds: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENT_LINES))
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
            self.pumps[(gateway, rest[1])] = data
        elif len(rest) == 3 and rest[0] == "pump" and rest[2] == "event":
            self.events.append(_event_line(gateway, rest[1], data, self._ts(body)))
        elif rest[0] == "pump" and rest[2:] == ["command", "result"]:
            self.events.append(_result_line(gateway, rest[1], data, self._ts(body)))
        elif len(rest) == 3 and rest[0] == "vitals" and rest[2] == "state":
            self.beds[(gateway, rest[1])] = data
        else:
            self._problem(f"{topic}: unknown topic")

    def _data(self, topic: str, body: Any, gw: GatewayView) -> dict[str, Any] | None:
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            self._problem(f"{topic}: no envelope with a data object")
            return None
        if isinstance(body.get("session"), str):
            gw.session = body["session"]
        if isinstance(body.get("seq"), int):
            gw.seq = max(gw.seq or 0, body["seq"])
        data: dict[str, Any] = body["data"]
        return data

    @staticmethod
    def _ts(body: Any) -> str:
        ts = body.get("ts") if isinstance(body, dict) else None
        return ts[11:19] if isinstance(ts, str) and len(ts) >= 19 else "--:--:--"

    def _problem(self, text: str) -> None:
        self.problems += 1
        self.last_problem = text[:120]


def _quantity(value: Any, digits: int | None = None) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float):
        return "-"
    number = value["value"]
    shown = f"{number:.{digits}f}" if digits is not None else f"{number:g}"
    return f"{shown} {value.get('unit', '')}".strip()


def _event_line(gateway: str, pump: str, data: Mapping[str, Any], ts: str) -> str:
    kind = str(data.get("type", "?"))
    detail = ""
    if kind == "rate_changed":
        old, new = data.get("from"), data.get("to")
        if isinstance(old, dict) and isinstance(new, dict):
            detail = f"{_quantity(old.get('rate'))} -> {_quantity(new.get('rate'))}"
    elif kind.startswith("alarm") and "code" in data:
        detail = str(data["code"])
    return f"{ts} {gateway}/{pump} {kind} {detail}".rstrip()


def _result_line(gateway: str, pump: str, data: Mapping[str, Any], ts: str) -> str:
    phase = str(data.get("phase", "?"))
    error = data.get("error")
    why = f" {error.get('code', '')}" if isinstance(error, dict) else ""
    verdict = data.get("verdict")
    if isinstance(verdict, dict) and phase == "rejected":
        rules = [f.get("rule", "?") for f in verdict.get("findings", []) if isinstance(f, dict)]
        why += " " + ",".join(str(r) for r in rules[:3])
    return f"{ts} {gateway}/{pump} command {data.get('id')} {phase}{why}".rstrip()


def _age(data: Mapping[str, Any], now: datetime) -> str:
    newest: datetime | None = None
    for value in data.values():
        if isinstance(value, dict) and isinstance(value.get("at"), str):
            try:
                at = datetime.fromisoformat(value["at"])
            except ValueError:
                continue
            if at.tzinfo is None:
                continue
            newest = at if newest is None or at > newest else newest
    if newest is None:
        return "-"
    seconds = max(0, int((now - newest).total_seconds()))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _vital(data: Mapping[str, Any], key: str) -> Text:
    value = data.get(key)
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float):
        return Text("-", style="dim")
    text = Text(f"{value['value']:g}")
    if value.get("stale"):
        text.stylize("red")
        text.append("!", style="bold red")
    elif key == "map" and not MAP_RANGE[0] <= value["value"] <= MAP_RANGE[1]:
        text.stylize("bold yellow")
    return text


def _name(model: WatchModel, gateway: str, ident: str) -> str:
    return ident if len(model.gateways) <= 1 else f"{gateway}/{ident}"


def render(model: WatchModel, now: datetime, broker: str = "") -> RenderableType:
    """One frame: header, pumps, beds, recent events (fits 80 columns)."""
    header = Text("infusiond watch", style="bold")
    for name, gw in sorted(model.gateways.items()):
        style = "green" if gw.state == "online" else "red"
        header.append(f"  {name} ")
        header.append(gw.state, style=style)
        if gw.seq is not None:
            header.append(f" seq {gw.seq}", style="dim")
    if not model.gateways:
        header.append(f"  waiting for infusiond/... on {broker or 'the broker'}", style="dim")
    header.append(f"  {now.astimezone(UTC):%H:%M:%S}Z", style="dim")

    pumps = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
    for column, width in (
        ("pump", 8), ("conn", 7), ("status", 8), ("drug", 14), ("dose", 17), ("rate", 11),
        ("alarms", 9),
    ):  # fmt: skip
        pumps.add_column(column, max_width=width, no_wrap=True, overflow="ellipsis")
    for (gateway, pump), data in sorted(model.pumps.items()):
        alarms = data.get("alarms")
        codes = [str(a.get("code")) for a in alarms if isinstance(a, dict)] if alarms else []
        conn = str(data.get("connection", "?"))
        pumps.add_row(
            _name(model, gateway, pump),
            Text(conn, style="green" if conn == "online" else "red"),
            str(data.get("status", "?")),
            str(data.get("drug", "-")),
            _quantity(data.get("dose")),
            _quantity(data.get("rate"), 2),
            Text(",".join(codes) or "-", style="bold red" if codes else "dim"),
        )

    beds = Table(box=None, pad_edge=False, header_style="bold")
    for column, width in (
        ("bed", 8), ("MAP", 5), ("SBP", 5), ("DBP", 5), ("HR", 5), ("SpO2", 5), ("age", 5),
        ("source", 24),
    ):  # fmt: skip
        beds.add_column(column, max_width=width, no_wrap=True, overflow="ellipsis")
    for (gateway, bed), data in sorted(model.beds.items()):
        beds.add_row(
            _name(model, gateway, bed),
            _vital(data, "map"),
            _vital(data, "sbp"),
            _vital(data, "dbp"),
            _vital(data, "hr"),
            _vital(data, "spo2"),
            _age(data, now),
            str(data.get("source") or "-"),
        )

    parts: list[RenderableType] = [header, Text("")]
    parts += [pumps] if model.pumps else [Text("no pumps yet", style="dim")]
    parts += [Text("")]
    parts += [beds] if model.beds else [Text("no beds yet", style="dim")]
    if model.events:
        parts += [Text(""), Text("recent", style="bold")]
        parts += [Text(line[:79], no_wrap=True, overflow="ellipsis") for line in model.events]
    if model.problems:
        parts.append(Text(f"{model.problems} bad message(s); last: {model.last_problem}"[:79],
                          style="yellow"))  # fmt: skip
    return Group(*parts)


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


async def _live(model: WatchModel, host: str, port: int, args: argparse.Namespace) -> None:
    console = Console()
    broker = args.broker

    with Live(
        render(model, datetime.now(UTC), broker), console=console, auto_refresh=False
    ) as live:

        def refresh() -> None:
            live.update(render(model, datetime.now(UTC), broker), refresh=True)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                collect(model, host, port, args.gateway, on_message=refresh), name="watch-mqtt"
            )
            while True:  # ages tick even when nothing arrives
                await asyncio.sleep(1.0)
                refresh()


async def _once(model: WatchModel, host: str, port: int, args: argparse.Namespace) -> None:
    arrived = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(
            collect(model, host, port, args.gateway, on_message=arrived.set), name="watch-mqtt"
        )
        async with asyncio.timeout(ONCE_MAX_S):
            try:
                while True:  # retained messages come in a burst; stop when it is over
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), ONCE_IDLE_S)
            except TimeoutError:
                pass
        task.cancel()
    Console(width=80).print(render(model, datetime.now(UTC), args.broker))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond watch``."""
    try:
        host, port = parse_broker(args.broker)
    except ValueError as exc:
        sys.stderr.write(f"infusiond watch: {exc}\n")
        return 2
    model = WatchModel()
    runner = _once if getattr(args, "once", False) else _live
    asyncio.run(runner(model, host, port, args))
    return 0
