"""The reference web dashboard in headless Chromium against a real mosquitto (WebSocket listener).

The broker holds retained payloads shaped like the daemon's (validated against docs/schemas);
the page is served by :class:`daemon.ui.web_server.WebServer`. A small in-test responder plays the
daemon's command side: it parses commands with the daemon's own parser and answers
``needs_confirmation`` first, then ``accepted`` + ``applied`` for the confirmed resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from amqtt.broker import Broker
from jsonschema import Draft202012Validator
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.base.envelope import Kind, encode, envelope
from daemon.base.quantities import Quantity
from daemon.base.results import (
    CommandResult,
    ErrorBody,
    ErrorCode,
    FirstOutcome,
    Phase,
    Readback,
    VerdictJson,
)
from daemon.base.timefmt import format_ts
from daemon.mqtt.command_parse import Command, parse_command
from daemon.ui.web_server import WebServer
from drivers.clock import utc_now
from tests.support.procs import Mosquitto
from tests.web.chromium import CHROMIUM, Page, chromium_page, navigate

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
    reason="Debian package chromium is not installed (scripts/bootstrap.sh installs it)",
)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
GATEWAY = "demo"
SESSION = "9f1c2a7be04d5531"
LIBRARY = {"name": "vasopressors-example", "version": "2026.11.1", "sha256": "a" * 64}
TOKEN = "tok-map-above-target"


def validator(kind: Kind) -> Draft202012Validator:
    path = SCHEMAS / (kind.schema.replace("/", "-") + ".json")
    return Draft202012Validator(json.loads(path.read_text()))


def wrapped(kind: Kind, data: dict[str, Any], *, seq: int = 41) -> bytes:
    """An enveloped payload, checked against its published schema before it is sent."""
    body = envelope(kind, gateway=GATEWAY, session=SESSION, seq=seq, ts=utc_now(), data=data)
    payload = encode(body)
    validator(kind).validate(json.loads(payload))
    return payload


def pump_state(pump: str, now: datetime, dose: float, rate: float) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pump_id": pump,
        "bed": "bed-1",
        "connection": "online",
        "status": "infusing",
        "rate": {"value": rate, "unit": "mL/h"},
        "profile": "adult-icu",
        "weight_kg": 70,
        "vtbi": {"value": 250.0, "unit": "mL"},
        "battery": 96,
        "alarms": [],
        "last_poll": format_ts(now),
    }
    if pump == "pump-1":
        return base | {
            "dose": {"value": dose, "unit": "ug/kg/min"},
            "drug": "norepinephrine",
            "concentration": {"value": 4, "unit": "ug/mL"},
            "diluent": "D5W",
            "route": "central",
            "volume_infused": {"value": 12.4, "unit": "mL"},
            "device": {"driver": "modbus", "model": "SIM-PUMP-1", "firmware": "1.0"},
        }
    return base | {
        "dose": {"value": dose, "unit": "[USP'U]/min"},
        "drug": "vasopressin",
        "concentration": {"value": 0.2, "unit": "[USP'U]/mL"},
        "diluent": "D5W",
        "route": "central",
        "vtbi": {"value": 100.0, "unit": "mL"},
        "volume_infused": {"value": 3.1, "unit": "mL"},
        "alarms": [
            {"code": "near_end", "priority": "low", "since": format_ts(now - timedelta(minutes=3))}
        ],
        "device": {"driver": "newera", "model": "NE-1000", "firmware": "3.928"},
    }


def vitals(bed: str, at: datetime, map_: float, *, stale: bool = False) -> dict[str, Any]:
    def reading(value: float, unit: str) -> dict[str, Any]:
        return {"value": value, "unit": unit, "at": format_ts(at), "stale": stale}

    return {
        "bed": bed,
        "map": reading(map_, "mm[Hg]"),
        "sbp": reading(map_ + 36, "mm[Hg]"),
        "dbp": reading(map_ - 16, "mm[Hg]"),
        "hr": reading(96, "/min"),
        "spo2": None if stale else reading(97, "%"),
        "source": "hl7:SIM-MONITOR",
    }


async def publish_bedside(client: aiomqtt.Client, now: datetime) -> None:
    """The demo bedside as retained state: bridge, two pumps, bed-1 live, bed-2 stale."""
    root = f"infusiond/{GATEWAY}"
    info = {
        "version": "0.1.0",
        "session": SESSION,
        "library": LIBRARY,
        "pumps": [{"id": "pump-1", "driver": "modbus"}, {"id": "pump-2", "driver": "newera"}],
        "beds": ["bed-1", "bed-2"],
        "control_enabled": True,
        "schemas": [kind.schema for kind in Kind],
    }
    await client.publish(f"{root}/bridge/state", b'{"state":"online"}', qos=1, retain=True)
    await client.publish(f"{root}/bridge/info", wrapped(Kind.BRIDGE_INFO, info), qos=1, retain=True)
    for pump, dose, rate in (("pump-1", 0.05, 52.5), ("pump-2", 0.03, 9.0)):
        payload = wrapped(Kind.PUMP_STATE, pump_state(pump, now, dose, rate))
        await client.publish(f"{root}/pump/{pump}/state", payload, qos=1, retain=True)
    await publish_map_series(client, now, ((0, 88),))
    stale = wrapped(Kind.VITALS_STATE, vitals("bed-2", now - timedelta(minutes=20), 61, stale=True))
    await client.publish(f"{root}/vitals/bed-2/state", stale, qos=1, retain=True)


async def publish_map_series(
    client: aiomqtt.Client, now: datetime, series: tuple[tuple[int, float], ...]
) -> None:
    """bed-1 vitals as the daemon publishes them, one per (minutes ago, MAP) reading."""
    for minutes_ago, value in series:
        at = now - timedelta(minutes=minutes_ago)
        payload = wrapped(Kind.VITALS_STATE, vitals("bed-1", at, value))
        await client.publish(f"infusiond/{GATEWAY}/vitals/bed-1/state", payload, qos=1, retain=True)


def rate_of(dose: float) -> float:
    """pump-1: ug/kg/min x 70 kg x 60 min/h / 4 ug/mL = mL/h."""
    return round(dose * 70 * 60 / 4, 3)


def confirm_verdict(dose: float) -> dict[str, Any]:
    """An increase while MAP is above target: confirm, plus an advisory."""
    return {
        "verdict": "confirm",
        "rate": {"value": rate_of(dose), "unit": "mL/h"},
        "dose": {"value": dose, "unit": "ug/kg/min"},
        "findings": [
            {
                "rule": "MAP_ABOVE_TARGET",
                "severity": "confirm",
                "message": "increase while MAP 88 mm[Hg] is above the target 85 mm[Hg]",
                "limit": {"value": 85, "unit": "mm[Hg]"},
                "observed": {"value": 88, "unit": "mm[Hg]"},
            },
            {
                "rule": "TITRATION_INTERVAL",
                "severity": "advisory",
                "message": "last change 2 min ago; the library suggests at least 5 min",
                "limit": {"value": 5, "unit": "min"},
                "observed": {"value": 2, "unit": "min"},
            },
        ],
        "library": LIBRARY,
    }


def confirm_then_apply(command: Command) -> list[CommandResult]:
    """The gate's answers for a confirm verdict: ask first; apply the confirmed resend."""
    assert command.dose is not None
    verdict = confirm_verdict(command.dose.value)
    if command.confirm is None:
        expires = utc_now() + timedelta(seconds=120)
        return [
            CommandResult.needs_confirmation(
                command.id, verdict=VerdictJson(verdict), confirm_token=TOKEN, expires_at=expires
            )
        ]
    if command.confirm.token != TOKEN:
        error = ErrorBody(ErrorCode.BAD_REQUEST, "token")
        return [CommandResult.rejected(command.id, error=error)]
    readback = Readback("infusing", Quantity.from_json(verdict["rate"]), None)
    return [
        CommandResult.accepted(command.id, verdict=VerdictJson(verdict)),
        CommandResult.applied(command.id, readback=readback),
    ]


Script = Callable[[Command], list[CommandResult]]


@dataclass
class Responder:
    """Plays the daemon's command side: parses each command with the daemon's own parser,
    publishes the results ``script`` gives, and after ``applied`` the event and new state."""

    client: aiomqtt.Client
    script: Script
    commands: list[tuple[Command, bool]] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 41

    async def run(self) -> None:
        await self.client.subscribe(
            f"infusiond/{GATEWAY}/pump/+/command",
            options=SubscribeOptions(qos=1, retainAsPublished=True),
        )
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.raw.append(json.loads(message.payload))
            pump = message.topic.value.split("/")[3]
            command = parse_command(message.payload, now=utc_now(), retained=message.retain)
            result_topic = f"{message.topic.value}/result"
            if not isinstance(command, Command):
                rejected = CommandResult.rejected(command.id, error=command.error())
                await self._answer(result_topic, rejected)
                continue
            self.commands.append((command, message.retain))
            for data in self.script(command):
                await self._answer(result_topic, data)
                if data.phase is Phase.APPLIED:
                    assert command.dose is not None
                    dose = command.dose.value
                    await self._applied(pump, dose, rate_of(dose), command.id)

    async def _answer(self, topic: str, data: CommandResult) -> None:
        payload = wrapped(Kind.PUMP_COMMAND_RESULT, data.to_json(), seq=self.seq)
        await self.client.publish(topic, payload, qos=1)

    async def _applied(self, pump: str, dose: float, rate: float, command_id: str) -> None:
        """What the daemon publishes after an applied change: one event, then the new state."""
        self.seq += 1
        event = {
            "type": "rate_changed",
            "pump_id": pump,
            "command_id": command_id,
            "from": {
                "rate": {"value": 52.5, "unit": "mL/h"},
                "dose": {"value": 0.05, "unit": "ug/kg/min"},
            },
            "to": {
                "rate": {"value": rate, "unit": "mL/h"},
                "dose": {"value": dose, "unit": "ug/kg/min"},
            },
        }
        root = f"infusiond/{GATEWAY}/pump/{pump}"
        await self.client.publish(
            f"{root}/event", wrapped(Kind.PUMP_EVENT, event, seq=self.seq), qos=1
        )
        state = wrapped(Kind.PUMP_STATE, pump_state(pump, utc_now(), dose, rate), seq=self.seq)
        await self.client.publish(f"{root}/state", state, qos=1, retain=True)


@contextlib.asynccontextmanager
async def dashboard(broker_port: int, ws_port: int, tmp_path: Path) -> AsyncIterator[Page]:
    """Retained bedside published (MQTT 3.1.1, which every broker speaks), page served and
    opened until the pump rows render."""
    async with (
        aiomqtt.Client("127.0.0.1", broker_port) as client,
        WebServer(broker_ws_url=f"ws://127.0.0.1:{ws_port}/", gateway=GATEWAY) as srv,
        chromium_page(tmp_path) as page,
    ):
        now = utc_now()
        await publish_bedside(client, now)
        await navigate(page, srv.url)
        await page.wait_for("document.querySelectorAll('#pump-rows tr[data-pump]').length === 2")
        # the page is subscribed: the last 10 minutes of MAP readings arrive, as they would live
        series = ((10, 74), (8, 78), (6, 81), (4, 84), (2, 86), (0, 88))
        await publish_map_series(client, now, series)
        yield page


def row_text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)})?.innerText ?? '')"


@pytest.mark.asyncio
async def test_page_shows_every_pump_and_bed_with_units_and_marks_stale_vitals(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path
) -> None:
    """Retained pump and vitals states render as rows with units; stale vitals are flagged;
    the MAP trend and dose history draw; a full-page screenshot is a real PNG."""
    broker, ws_port = ws_broker
    async with dashboard(broker.port, ws_port, tmp_path) as page:
        pump1 = await page.evaluate(row_text('tr[data-pump="pump-1"]'))
        pump2 = await page.evaluate(row_text('tr[data-pump="pump-2"]'))
        for expected in ("pump-1", "online", "infusing", "norepinephrine", "0.05 ug/kg/min",
                         "52.5 mL/h", "250 mL", "12.4 mL", "4 ug/mL", "none"):  # fmt: skip
            assert expected in pump1, (expected, pump1)
        for expected in ("pump-2", "vasopressin", "0.03 U/min", "9 mL/h", "100 mL", "LOW near_end"):
            assert expected in pump2, (expected, pump2)
        assert "3 min" in pump2  # the alarm's age

        await page.wait_for(
            "document.querySelector('#map-trends polyline')?.getAttribute('points')"
            ".split(' ').length === 6"
        )
        # the series ends with the current reading (already drawn from the retained message)
        await page.wait_for(row_text('tr[data-bed="bed-1"]') + ".includes('88 mmHg')")
        bed1 = await page.evaluate(row_text('tr[data-bed="bed-1"]'))
        bed2 = await page.evaluate(row_text('tr[data-bed="bed-2"]'))
        for expected in ("88 mmHg", "124 mmHg", "72 mmHg", "96 /min", "97 %", "SIM-MONITOR"):
            assert expected in bed1, (expected, bed1)
        assert "STALE" not in bed1
        assert "61 mmHg" in bed2
        assert bed2.count("STALE") == 4  # map, sbp, dbp, hr; spo2 is absent
        assert "20 min ago" in bed2
        stale_cells = await page.evaluate(
            "document.querySelectorAll('tr[data-bed=\"bed-2\"] td.stale').length"
        )
        assert stale_cells == 4
        header = await page.evaluate("document.querySelector('header').innerText")
        assert "bridge online" in header
        assert "broker: connected" in header
        assert "vasopressors-example 2026.11.1" in header
        assert (
            await page.evaluate("document.querySelectorAll('#dose-histories .chart').length") == 2
        )

        png = await page.screenshot(tmp_path / "dashboard.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 1200
        assert height >= 900
        assert len(png) > 50_000  # a rendered page, not a blank one

        # a tablet in portrait: the page reflows to one column, nothing wider than the screen
        await page.set_viewport(800, 1280, mobile=True)
        await page.wait_for("document.documentElement.clientWidth === 800")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 800
        await page.screenshot(tmp_path / "tablet.png")
        assert page.console_errors == []

        # the broker goes away: the page says its values are frozen, and forbids sending
        broker.stop()
        banner = await page.wait_for("document.getElementById('banner').innerText")
        assert "Not connected to the broker since" in banner
        await page.wait_for("document.getElementById('t-send').disabled")
        assert "last known state" in banner


@pytest.mark.asyncio
async def test_titration_shows_findings_asks_for_a_reason_and_follows_to_applied(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path
) -> None:
    """set_dose goes out as a valid, unretained command; needs_confirmation shows the verdict's
    findings and asks for a reason; the resend carries {token, reason} under a new id and the
    page follows it to "applied", then shows the new dose from the pump's state."""
    broker, ws_port = ws_broker
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        asyncio.TaskGroup() as tg,
    ):
        responder = Responder(client, confirm_then_apply)
        task = tg.create_task(responder.run(), name="responder")
        async with dashboard(broker.port, ws_port, tmp_path) as page:
            await page.wait_for("!document.getElementById('t-send').disabled")
            assert await page.evaluate("document.getElementById('t-unit').innerText") == "ug/kg/min"

            # no clinician: refused in the page, nothing published
            await page.type_into("t-dose", "0.08")
            await page.click("t-send")
            error = await page.wait_for("document.getElementById('t-error').innerText")
            assert "Clinician id" in error

            await page.type_into("t-clinician", "dr-a")
            await page.click("t-send")
            await page.wait_for(
                "document.getElementById('t-phase').dataset.phase === 'needs_confirmation'"
            )
            findings = await page.evaluate(
                "[...document.querySelectorAll('#t-findings tbody tr')].map(r => r.innerText)"
            )
            assert len(findings) == 2
            assert "MAP_ABOVE_TARGET" in findings[0]
            assert "confirm" in findings[0].lower()
            assert "85 mmHg" in findings[0]
            assert "88 mmHg" in findings[0]
            assert "TITRATION_INTERVAL" in findings[1]
            verdict = await page.evaluate("document.getElementById('t-verdict').innerText")
            assert "verdict: confirm" in verdict
            assert "84 mL/h" in verdict
            assert not await page.evaluate("document.getElementById('t-confirm').hidden")
            await page.screenshot(tmp_path / "confirm.png")

            # confirming without a reason is refused in the page
            await page.click("t-confirm-send")
            assert "Reason" in await page.wait_for("document.getElementById('t-error').innerText")

            await page.type_into("t-reason", "MAP 88 but lactate rising; per attending")
            await page.click("t-confirm-send")
            await page.wait_for("document.getElementById('t-phase').dataset.phase === 'applied'")
            trail = await page.evaluate("document.getElementById('t-trail').innerText")
            assert "accepted" in trail
            assert "pump reads 84 mL/h" in trail
            await page.wait_for(row_text('tr[data-pump="pump-1"]') + ".includes('0.08 ug/kg/min')")
            assert "84 mL/h" in await page.evaluate(row_text('tr[data-pump="pump-1"]'))
            events = await page.evaluate("document.getElementById('events').innerText")
            assert "rate changed" in events
            assert "command applied" in events
            history = await page.evaluate(
                "document.querySelector('#dose-histories .chart[data-pump=\"pump-1\"] .changes')"
                ".innerText"
            )
            assert "0.08 ug/kg/min = 84 mL/h" in history
            assert "0.05 ug/kg/min" in history
            await page.screenshot(tmp_path / "titration.png")
            assert page.console_errors == []
        task.cancel()

    first, second = (command for command, _ in responder.commands)
    assert [retained for _, retained in responder.commands] == [False, False]
    for raw in responder.raw:
        validator(Kind.PUMP_COMMAND).validate(raw)
        assert raw["ttl_s"] == 30
        assert raw["action"] == "set_dose"
    assert first.by.clinician == "dr-a"
    assert first.dose is not None
    assert (first.dose.value, first.dose.unit) == (0.08, "ug/kg/min")
    assert first.confirm is None
    assert second.id != first.id
    assert second.confirm is not None
    assert second.confirm.token == TOKEN
    assert second.confirm.reason == "MAP 88 but lactate rising; per attending"
    assert abs((utc_now() - first.issued_at).total_seconds()) < 60


@contextlib.asynccontextmanager
async def embedded_broker() -> AsyncIterator[tuple[int, int]]:
    """amqtt, as ``infusiond demo`` embeds it: a TCP and a WebSocket listener on loopback,
    each bound to port 0; yields the ports they got."""
    config = {
        "listeners": {
            "default": {"type": "tcp", "bind": "127.0.0.1:0"},
            "ws": {"type": "ws", "bind": "127.0.0.1:0"},
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    try:
        # amqtt has no public accessor for its listening sockets (0.12)
        bound = {
            name: server.instance.sockets[0].getsockname()[1]
            for name, server in broker._servers.items()
        }
        yield bound["default"], bound["ws"]
    finally:
        await broker.shutdown()


@pytest.mark.asyncio
async def test_page_works_against_the_embedded_amqtt_broker(tmp_path: Path) -> None:
    """The demo's embedded broker (amqtt, MQTT 3.1.1 only) serves the page over its WebSocket
    listener just as mosquitto does."""
    async with (
        embedded_broker() as (tcp_port, ws_port),
        dashboard(tcp_port, ws_port, tmp_path) as page,
    ):
        assert "52.5 mL/h" in await page.evaluate(row_text('tr[data-pump="pump-1"]'))
        assert "0.03 U/min" in await page.evaluate(row_text('tr[data-pump="pump-2"]'))
        await page.wait_for(row_text('tr[data-bed="bed-1"]') + ".includes('88 mmHg')")
        header = "document.querySelector('header').innerText"
        assert "broker: connected" in await page.evaluate(header)
        assert await page.evaluate("document.getElementById('banner').hidden")

        # events are listed newest first; a jump in seq is shown as a gap
        now = utc_now()
        alarm = {"code": "occlusion", "priority": "high", "since": format_ts(now)}
        raised = {"type": "alarm_raised", "pump_id": "pump-2", "alarm": alarm}
        online = {"type": "connection_changed", "pump_id": "pump-2", "connection": "offline"}
        async with aiomqtt.Client("127.0.0.1", tcp_port) as client:
            topic = f"infusiond/{GATEWAY}/pump/pump-2/event"
            await client.publish(topic, wrapped(Kind.PUMP_EVENT, raised, seq=50), qos=1)
            await client.publish(topic, wrapped(Kind.PUMP_EVENT, online, seq=53), qos=1)
        events = await page.wait_for(
            "[...document.querySelectorAll('#events li')].map(li => li.innerText)"
            ".filter(t => !t.includes('command')).length === 3"
            " && [...document.querySelectorAll('#events li')].map(li => li.innerText)"
        )
        assert "connection changed offline" in events[0]
        assert "events 51-52 were not received" in events[1]
        assert "alarm raised HIGH occlusion" in events[2]

        # the daemon's last will: the page says the values are no longer live
        async with aiomqtt.Client("127.0.0.1", tcp_port) as client:
            topic = f"infusiond/{GATEWAY}/bridge/state"
            await client.publish(topic, b'{"state":"offline"}', qos=1, retain=True)
        banner = await page.wait_for("document.getElementById('banner').innerText")
        assert "infusiond on gateway demo is offline" in banner
        assert "bridge offline" in await page.evaluate(header)
        assert page.console_errors == []


def reject_cancel_disabled(command: Command) -> list[CommandResult]:
    """Above the hard maximum: reject; 0.2: ask to confirm; anything else: control disabled."""
    assert command.dose is not None
    dose = command.dose.value
    if dose > 3:
        verdict = {
            "verdict": "reject",
            "rate": {"value": rate_of(dose), "unit": "mL/h"},
            "dose": {"value": dose, "unit": "ug/kg/min"},
            "findings": [
                {
                    "rule": "HARD_MAX",
                    "severity": "reject",
                    "message": f"{dose:g} ug/kg/min is above the hard maximum 3 ug/kg/min",
                    "limit": {"value": 3.0, "unit": "ug/kg/min"},
                    "observed": {"value": dose, "unit": "ug/kg/min"},
                }
            ],
            "library": LIBRARY,
        }
        return [CommandResult.rejected(command.id, verdict=VerdictJson(verdict))]
    if dose == 0.2:
        return confirm_then_apply(command)
    error = ErrorBody(ErrorCode.CONTROL_DISABLED, "remote control is disabled in the config")
    return [CommandResult.rejected(command.id, error=error)]


@pytest.mark.asyncio
async def test_rejections_show_why_and_a_cancelled_confirmation_sends_nothing(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path
) -> None:
    """A reject verdict shows its findings and offers no override; cancelling a confirmation
    sends nothing more; an error answer shows its code and message."""
    broker, ws_port = ws_broker
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        asyncio.TaskGroup() as tg,
    ):
        responder = Responder(client, reject_cancel_disabled)
        task = tg.create_task(responder.run(), name="responder")
        async with dashboard(broker.port, ws_port, tmp_path) as page:
            await page.wait_for("!document.getElementById('t-send').disabled")
            await page.type_into("t-clinician", "dr-b")
            phase = "document.getElementById('t-phase').dataset.phase"

            await page.type_into("t-dose", "4")
            await page.click("t-send")
            await page.wait_for(f"{phase} === 'rejected'")
            findings = await page.evaluate("document.getElementById('t-findings').innerText")
            assert "HARD_MAX" in findings
            assert "3 ug/kg/min" in findings
            assert "4 ug/kg/min" in findings
            assert await page.evaluate("document.getElementById('t-confirm').hidden")
            trail = await page.evaluate("document.getElementById('t-trail').innerText")
            assert "nothing reached the pump" in trail

            await page.wait_for("!document.getElementById('t-send').disabled")
            await page.type_into("t-dose", "0.2")
            await page.click("t-send")
            await page.wait_for(f"{phase} === 'needs_confirmation'")
            await page.click("t-cancel")
            await page.wait_for(f"{phase} === 'cancelled'")
            assert await page.evaluate("document.getElementById('t-confirm').hidden")
            await page.wait_for("!document.getElementById('t-send').disabled")

            await page.type_into("t-dose", "0.06")
            await page.click("t-send")
            await page.wait_for(f"{phase} === 'rejected'")
            trail = await page.evaluate("document.getElementById('t-trail').innerText")
            assert "control_disabled: remote control is disabled in the config" in trail
            assert await page.evaluate("document.getElementById('t-findings').hidden")
            assert "0.05 ug/kg/min" in await page.evaluate(row_text('tr[data-pump="pump-1"]'))
            assert page.console_errors == []
        task.cancel()
    assert [c.dose.value for c, _ in responder.commands if c.dose] == [4.0, 0.2, 0.06]
    assert all(c.confirm is None for c, _ in responder.commands)


def device_outcomes(command: Command) -> list[CommandResult]:
    """The outcomes after the gate: the pump refuses, the pump is silent, the id was seen."""
    assert command.dose is not None
    verdict = VerdictJson(
        {**confirm_verdict(command.dose.value), "verdict": "accept", "findings": []}
    )
    accepted = CommandResult.accepted(command.id, verdict=verdict)
    if command.dose.value == 0.07:
        message = "pump refused the rate; verified unchanged"
        error = ErrorBody(ErrorCode.DEVICE_REJECTED, message)
        return [accepted, CommandResult.failed(command.id, error=error)]
    if command.dose.value == 0.09:
        error = ErrorBody(ErrorCode.DEVICE_TIMEOUT, "no answer from the pump within 2 s")
        return [accepted, CommandResult.uncertain(command.id, error=error)]
    return [CommandResult.duplicate(command.id, first=FirstOutcome(Phase.APPLIED))]


@pytest.mark.asyncio
async def test_failed_uncertain_and_duplicate_outcomes_are_shown_as_such(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path
) -> None:
    """After "accepted", a refusal, a silent pump and a duplicate id each end the flow with
    their own phase and the gateway's explanation."""
    broker, ws_port = ws_broker
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        asyncio.TaskGroup() as tg,
    ):
        responder = Responder(client, device_outcomes)
        task = tg.create_task(responder.run(), name="responder")
        async with dashboard(broker.port, ws_port, tmp_path) as page:
            await page.wait_for("!document.getElementById('t-send').disabled")
            await page.type_into("t-clinician", "dr-c")
            phase = "document.getElementById('t-phase').dataset.phase"
            trail = "document.getElementById('t-trail').innerText"
            for dose, expected, text in (
                ("0.07", "failed", "device_rejected: pump refused the rate"),
                ("0.09", "uncertain", "device_timeout: no answer from the pump within 2 s"),
                ("0.1", "duplicate", "first outcome: applied"),
            ):
                await page.wait_for("!document.getElementById('t-send').disabled")
                await page.type_into("t-dose", dose)
                await page.click("t-send")
                await page.wait_for(f"{phase} === {json.dumps(expected)}")
                assert text in await page.evaluate(trail)
            assert page.console_errors == []
        task.cancel()
    assert len(responder.commands) == 3


@pytest.mark.asyncio
async def test_a_broker_that_requires_a_login_gets_one_from_the_user(tmp_path: Path) -> None:
    """A broker with a password file refuses the anonymous page: the page asks for credentials
    once (no retry loop), says so when they are wrong, and connects with the right ones."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "nurse-1", "right-pw"],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    # as root mosquitto would drop to its own user, which cannot read pytest's private tmp dir
    stay = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    broker = Mosquitto(
        tmp_path / "auth", extra_conf=[stay, f"password_file {passwd}"], websockets=True
    )
    broker.start()
    ws_port = broker.ws_port
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="nurse-1", password="right-pw"
        ) as client:
            await publish_bedside(client, utc_now())
        async with (
            WebServer(broker_ws_url=f"ws://127.0.0.1:{ws_port}/", gateway=GATEWAY) as srv,
            chromium_page(tmp_path) as page,
        ):
            await navigate(page, srv.url)
            login = "document.getElementById('login')"
            await page.wait_for(f"!{login}.hidden")
            assert "requires a username and password" in await page.evaluate(f"{login}.innerText")
            header = "document.querySelector('header').innerText"
            assert "refused: not authorized" in await page.evaluate(header)

            await page.type_into("login-user", "nurse-1")
            await page.type_into("login-password", "wrong-pw")
            await page.click("login-send")
            await page.wait_for(f"{login}.innerText.includes('refused these credentials')")
            await page.screenshot(tmp_path / "login.png")

            await page.type_into("login-password", "right-pw")
            await page.click("login-send")
            await page.wait_for(
                "document.querySelectorAll('#pump-rows tr[data-pump]').length === 2"
            )
            assert await page.evaluate(f"{login}.hidden")
            assert await page.evaluate("document.getElementById('login-password').value") == ""
            assert "broker: connected" in await page.evaluate(header)
    finally:
        broker.stop()
