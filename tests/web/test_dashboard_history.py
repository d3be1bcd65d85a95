"""The dashboard in headless Chromium, opened late: charts and Recent events come from the
journal over /api/history and /api/events (a real journal, a real mosquitto), then live data.

Checked on the rendered page at 1280 and 768 px: the history is there before any live event,
the chart axes span the 30 min their heading names, units read as on a label (U/min, mmHg),
"last poll" reads live, a rejected command is listed once, and with two findings "Confirm and
send" stays near the top of the Titrate card. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.base.envelope import Kind
from daemon.base.events import CommandRejected, PumpEvent
from daemon.core.pump_events import event_from_json
from daemon.journal import AsyncJournal
from daemon.journal.history import History
from daemon.ui.web_server import WebServer
from drivers.clock import utc_now
from tests.support.procs import Mosquitto
from tests.web.chromium import Page, chromium_page, navigate
from tests.web.test_dashboard import (
    GATEWAY,
    Responder,
    confirm_then_apply,
    publish_bedside,
    pytestmark,
    row_text,
    wrapped,
)

__all__ = ["pytestmark"]  # skipped, like test_dashboard, where Chromium is not installed

# "Confirm and send" below the top of the Titrate card, at most: the form, the trail, the
# verdict and two findings (it was ~2,400 px when each finding wrapped in a 100 px column)
BUTTON_NEAR_TOP_PX = 900
FINDING_MAX_PX = 110  # one finding's height: a few lines, not a 10-line column
MINUS = "\N{MINUS SIGN}"  # the axis labels' typographic minus


def change(old: float, new: float) -> PumpEvent:
    def point(dose: float) -> dict[str, Any]:
        return {
            "rate": {"value": round(dose * 70 * 60 / 4, 3), "unit": "mL/h"},
            "dose": {"value": dose, "unit": "ug/kg/min"},
        }

    return event_from_json(
        {"type": "rate_changed", "from": point(old), "to": point(new), "source": "device"}
    )


async def fill_journal(journal: AsyncJournal) -> None:
    """pump-1 at 0.04 since 2 h ago, 0.05 from 25 min ago; an alarm on pump-2 3 min ago; a
    rejection 10 min ago."""
    now = utc_now()
    await journal.record_event("pump-1", change(0.03, 0.04), ts=now - timedelta(hours=2))
    await journal.record_event("pump-1", change(0.04, 0.05), ts=now - timedelta(minutes=25))
    await journal.record_event(
        "pump-1",
        CommandRejected("web-old-1", {"verdict": "reject", "findings": []}),
        ts=now - timedelta(minutes=10),
    )
    alarm = {"code": "near_end", "priority": "low", "since": "2026-12-06T00:00:00.000Z"}
    await journal.record_event(
        "pump-2",
        event_from_json({"type": "alarm_raised", "alarm": alarm}),
        ts=now - timedelta(minutes=3),
    )


@contextlib.asynccontextmanager
async def late_page(
    broker: Mosquitto, ws_port: int, tmp_path: Path
) -> AsyncIterator[tuple[Page, aiomqtt.Client]]:
    """A journal with 2 h of history and a retained bedside; the page opened after both."""
    async with (
        await AsyncJournal.open(tmp_path / "data", gateway_id=GATEWAY) as journal,
        aiomqtt.Client("127.0.0.1", broker.port) as client,
    ):
        await fill_journal(journal)
        history = History(GATEWAY, lambda: journal, lambda: ("pump-1", "pump-2"))
        await publish_bedside(client, utc_now())
        async with (
            WebServer(
                broker_ws_url=f"ws://127.0.0.1:{ws_port}/", gateway=GATEWAY, history=history
            ) as srv,
            chromium_page(tmp_path) as page,
        ):
            await navigate(page, srv.url)
            await page.wait_for(
                "document.querySelectorAll('#pump-rows tr[data-pump]').length === 2"
            )
            yield page, client


async def geometry(page: Page) -> dict[str, Any]:
    script = """(() => {
      const top = (id) => document.getElementById(id).getBoundingClientRect().top;
      const rows = [...document.querySelectorAll('#t-findings tbody tr')];
      return {
        button: top('t-confirm-send') - top('titrate-section'),
        rows: rows.map((r) => r.getBoundingClientRect().height),
        scroll: document.documentElement.scrollWidth,
      };
    })()"""
    result: dict[str, Any] = await page.evaluate(script)
    return result


@pytest.mark.asyncio
async def test_a_late_page_shows_the_journal_history_then_live_data(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path
) -> None:
    """Recent events and the dose chart are filled from the journal on open; the axes read
    -30 min as the headings say; units are label units; last poll reads live; a rejected
    command (event + result) is listed once."""
    broker, ws_port = ws_broker
    async with late_page(broker, ws_port, tmp_path) as (page, client):
        events = await page.wait_for(
            "document.getElementById('events').innerText.includes('alarm raised') && "
            "document.getElementById('events').innerText"
        )
        assert "rate changed" in events
        assert "0.05 ug/kg/min" in events
        assert events.count("web-old-1") == 1
        assert await page.evaluate("document.getElementById('dose-window').innerText") == (
            "last 30 min, from the journal"
        )
        changes = await page.evaluate(
            "document.querySelector('#dose-histories .chart[data-pump=\"pump-1\"] .changes')"
            ".innerText"
        )
        assert "0.04 ug/kg/min" in changes  # the dose when the window opened
        assert "at the window start" in changes
        assert "0.05 ug/kg/min" in changes
        # the step line starts at the left edge of the axis: the window start, not page open
        first_x = await page.evaluate(
            "document.querySelector('#dose-histories .chart[data-pump=\"pump-1\"] polyline')"
            ".getAttribute('points').split(' ')[0].split(',')[0]"
        )
        assert float(first_x) == pytest.approx(44.0)
        axis = await page.evaluate(
            "[...document.querySelectorAll('.plot text')].map((t) => t.textContent)"
        )
        assert f"{MINUS}30 min" in axis
        assert f"{MINUS}5 min" not in axis
        assert "last 30 min" in await page.evaluate(
            "document.querySelector('#trend-section h2').innerText"
        )
        pump1 = await page.evaluate(row_text('tr[data-pump="pump-1"]'))
        assert "live" in pump1
        body = await page.evaluate("document.body.innerText")
        assert "[USP'U]" not in body
        assert "0.03 U/min" in body

        # live: a rejection arrives as its result and as an event; Recent events lists it once
        root = f"infusiond/{GATEWAY}/pump/pump-1"
        result = {
            "id": "web-live-9",
            "phase": "rejected",
            "error": {"code": "bad_request", "message": "dose.value: over the hard maximum"},
        }
        await client.publish(f"{root}/command/result", wrapped(Kind.PUMP_COMMAND_RESULT, result))
        rejected = {"type": "command_rejected", "command_id": "web-live-9"}
        await client.publish(f"{root}/event", wrapped(Kind.PUMP_EVENT, rejected, seq=100))
        alarm = {"code": "near_end", "priority": "low", "since": "2026-12-06T00:00:00.000Z"}
        marker = {"type": "alarm_cleared", "alarm": alarm}
        await client.publish(
            f"infusiond/{GATEWAY}/pump/pump-2/event", wrapped(Kind.PUMP_EVENT, marker, seq=101)
        )
        events = await page.wait_for(
            "document.getElementById('events').innerText.includes('alarm cleared') && "
            "document.getElementById('events').innerText"
        )
        assert events.count("web-live-9") == 1
        png = await page.screenshot(tmp_path / "dashboard-history-1280.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert page.console_errors == []


@pytest.mark.asyncio
@pytest.mark.parametrize("width", [1280, 768])
async def test_findings_keep_confirm_and_send_near_the_top(
    ws_broker: tuple[Mosquitto, int], tmp_path: Path, width: int
) -> None:
    """Two findings at 1280 and 768 px: each is a compact block with label units (mmHg), and
    "Confirm and send" is within BUTTON_NEAR_TOP_PX of the top of the Titrate card."""
    broker, ws_port = ws_broker
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        asyncio.TaskGroup() as tg,
    ):
        responder = Responder(client, confirm_then_apply)
        task = tg.create_task(responder.run(), name="responder")
        async with late_page(broker, ws_port, tmp_path) as (page, _):
            await page.set_viewport(width, 1000)
            await page.wait_for(f"window.innerWidth === {width}")
            await page.wait_for("!document.getElementById('t-send').disabled")
            await page.type_into("t-dose", "0.08")
            await page.type_into("t-clinician", "dr-a")
            await page.click("t-send")
            await page.wait_for(
                "document.getElementById('t-phase').dataset.phase === 'needs_confirmation'"
            )
            found = await geometry(page)
            await page.screenshot(tmp_path / f"confirm-{width}.png")
            findings = await page.evaluate("document.getElementById('t-findings').innerText")
        task.cancel()
    assert len(found["rows"]) == 2
    assert max(found["rows"]) <= FINDING_MAX_PX, found
    assert 0 < found["button"] <= BUTTON_NEAR_TOP_PX, found
    assert found["scroll"] <= width
    assert "mm[Hg]" not in findings
    assert "85 mmHg" in findings
