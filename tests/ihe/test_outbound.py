"""DEC, IPEC and ACM to a real (simulated) EHR over MLLP, from a real journal file: journaled
first, sent in order, ACK awaited, nothing lost across an outage, a re-send keeps MSH-10."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon.base.events import PumpEvent
from daemon.core.pump_events import event_from_json
from daemon.ihe.outbound import Hl7Out
from daemon.journal import AsyncJournal, Journal
from drivers.hl7.ack import AckCode
from sim_devices.ehr import EhrSimulator
from tests.ihe.conftest import make_out
from tests.support.events import RawEvent

pytestmark = pytest.mark.asyncio

RATE = {"value": 52.5, "unit": "mL/h"}


def rate_changed(to: float, command_id: str = "cmd-1") -> PumpEvent:
    return event_from_json(rate_changed_json(to, command_id))


def rate_changed_json(to: float, command_id: str) -> dict[str, Any]:
    return {
        "type": "rate_changed",
        "from": {"rate": RATE, "dose": None},
        "to": {"rate": {"value": to, "unit": "mL/h"}, "dose": None},
        "source": "command",
        "command_id": command_id,
    }


def alarm(kind: str) -> PumpEvent:
    return event_from_json(
        {
            "type": kind,
            "alarm": {
                "code": "occlusion",
                "priority": "high",
                "since": "2026-12-06T01:29:00.000Z",
            },
        }
    )


@asynccontextmanager
async def running(out: Hl7Out) -> AsyncIterator[Hl7Out]:
    await out.prepare()
    task = asyncio.create_task(out.run(), name="hl7-out-under-test")
    try:
        yield out
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_events_become_ipec_and_acm_in_journal_order_with_one_alarm_identity(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """rate_changed -> IPEC (from/to, command id); alarm raised/cleared -> two ACM sharing one
    alarm identity (OBR-3) with phase start/end; events with no IHE meaning send nothing."""
    out = make_out(journal, ehr.port)
    async with running(out):
        await journal.record_events(
            "pump-1",
            [
                rate_changed(63.0),
                event_from_json(
                    {"type": "connection_changed", "connection": "online", "previous": "connecting"}
                ),
                alarm("alarm_raised"),
                alarm("alarm_cleared"),
            ],
        )
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) >= 3)
            await out.drained.wait()
    assert [m.profile for m in ehr.received] == ["IPEC", "ACM", "ACM"]
    ipec, raised, cleared = ehr.received
    assert ipec.subject == "rate_changed"  # the TF has no rate-change event: a local code
    assert ipec.value("rate_from") == "52.5"
    assert ipec.value("MDC_FLOW_FLUID_PUMP") == "63"
    assert ipec.value("command_id") == "cmd-1"
    assert raised.filler == cleared.filler
    assert raised.filler.startswith("pump-1:occlusion:")
    assert raised.value("MDC_ATTR_EVENT_PHASE") == "start"
    assert cleared.value("MDC_ATTR_EVENT_PHASE") == "end"
    assert raised.value("MDC_ATTR_ALARM_STATE") == "active"
    assert cleared.value("MDC_ATTR_ALARM_STATE") == "inactive"
    assert raised.value("MDC_ATTR_ALARM_PRIORITY") == "PH"
    assert raised.value("MDC_ATTR_ALERT_TYPE") == "ST"
    assert raised.value("MDC_ATTR_ALERT_SOURCE") == "69985^MDC_DEV_PUMP_INFUS_MDS^MDC"
    assert raised.raw.split(b"\r")[4].endswith(b"|pump-1")  # OBX-18 of the event facet
    assert await journal.run(Journal.hl7_pending) == []


@pytest.mark.slow
async def test_ehr_outage_of_seconds_loses_nothing_and_keeps_order(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """Events journaled while the EHR is down wait in the journal's HL7 outbox and all arrive,
    in journal order, once it is back on the same port; none is sent twice."""
    out = make_out(journal, ehr.port)
    async with running(out):
        await journal.record_events("pump-1", [rate_changed(60.0, "before")])
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) == 1)
        await ehr.stop()
        for i in range(10):
            await journal.record_events("pump-1", [rate_changed(61.0 + i, f"during-{i}")])
        async with asyncio.timeout(10):
            while len(await journal.run(Journal.hl7_pending)) < 10:
                await asyncio.sleep(0.05)  # polling the journal file: no event to wait on
        await asyncio.sleep(2.0)  # an outage of seconds: the sender keeps retrying meanwhile
        assert len(ehr.received) == 1
        await ehr.start()
        async with asyncio.timeout(15):
            await ehr.wait_for(lambda r: len(r) == 11)
            await out.drained.wait()
    ids = [m.value("command_id") for m in ehr.received]
    assert ids == ["before", *(f"during-{i}" for i in range(10))]
    assert ehr.duplicates == 0
    assert out.stats.connects >= 2
    assert await journal.run(Journal.hl7_pending) == []


async def test_lost_ack_is_resent_with_the_same_control_id(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """The EHR took the message but its ACK never came: after the ACK timeout the gateway
    reconnects and sends the same bytes (same MSH-10), which the EHR recognises as a duplicate."""
    ehr.drop_acks = 1
    out = make_out(journal, ehr.port, ack_timeout_s=0.3)
    async with running(out):
        await journal.record_events("pump-1", [rate_changed(63.0)])
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) == 1)
            await out.drained.wait()  # cleared before the first send, set once all are ACKed
    assert len(ehr.received) == 1
    assert ehr.duplicates == 1
    assert out.stats.acked == 1


@pytest.mark.parametrize("code", [AckCode.AE, AckCode.AR])
async def test_refused_message_is_counted_logged_and_not_resent(
    journal: AsyncJournal, ehr: EhrSimulator, code: AckCode
) -> None:
    """An AE/AR answer ends that message (sending it again would be refused again): it is
    counted with the EHR's text, kept out of the pending queue, and the next one goes out."""
    ehr.answer = code
    out = make_out(journal, ehr.port)
    async with running(out):
        await journal.record_events("pump-1", [rate_changed(63.0, "a"), rate_changed(64.0, "b")])
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) == 2)
            await out.drained.wait()
    assert out.stats.last_refusal is not None
    assert out.stats.last_refusal.code is code
    assert "refused by the simulated EHR" in out.stats.last_refusal.text
    assert ehr.duplicates == 0
    assert await journal.run(Journal.hl7_pending) == []


async def test_messages_queued_before_a_restart_are_sent_after_it(tmp_path: Path) -> None:
    """Messages stored while no EHR listened survive a gateway restart (a new journal handle
    on the same file) and go out with the control ids they were given before it."""
    data = tmp_path / "data"
    ehr = EhrSimulator()
    port = await ehr.start()
    await ehr.stop()  # the EHR is down: nothing can be delivered
    async with await AsyncJournal.open(data, gateway_id="gw") as journal:
        out = make_out(journal, port)
        async with running(out):
            await journal.record_events("pump-1", [rate_changed(63.0, "x"), alarm("alarm_raised")])
            async with asyncio.timeout(10):
                while len(await journal.run(Journal.hl7_pending)) < 2:
                    await asyncio.sleep(0.05)
        before = [item.control_id for item in await journal.run(Journal.hl7_pending)]
    await ehr.start()
    try:
        async with (
            await AsyncJournal.open(data, gateway_id="gw") as journal,
            running(make_out(journal, port)),
            asyncio.timeout(10),
        ):
            await ehr.wait_for(lambda r: len(r) == 2)
    finally:
        await ehr.stop()
    assert [m.control_id for m in ehr.received] == before
    assert [m.profile for m in ehr.received] == ["IPEC", "ACM"]


async def test_dec_is_sent_on_a_change_of_what_it_reports_not_on_every_poll(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """A pump.state whose reported fields did not change (only volume moved) sends no DEC;
    a new rate does, and a vitals reading does."""
    out = make_out(journal, ehr.port)
    state: dict[str, Any] = {
        "pump_id": "pump-1",
        "connection": "online",
        "status": "infusing",
        "rate": RATE,
        "dose": {"value": 0.05, "unit": "ug/kg/min"},
        "drug": "norepinephrine",
        "concentration": {"value": 4.0, "unit": "ug/mL"},
        "bed": "bed-1",
        "vtbi": None,
        "volume_infused": {"value": 1.0, "unit": "mL"},
        "device": {"driver": "modbus", "model": "SIM", "serial": "S1", "firmware": "1"},
    }
    async with running(out):
        out.pump_state("pump-1", state)
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) == 1)
        out.pump_state("pump-1", {**state, "volume_infused": {"value": 1.1, "unit": "mL"}})
        out.pump_state("pump-1", {**state, "rate": {"value": 63.0, "unit": "mL/h"}})
        out.vitals(
            "bed-1", {"map": {"value": 72, "unit": "mm[Hg]", "at": "2026-12-06T01:29:59.000Z"}}
        )
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) >= 3)
            await out.drained.wait()  # a spurious DEC would have been queued before the last
    decs = ehr.of("DEC")
    assert len(decs) == 3
    rates = [d.value("MDC_FLOW_FLUID_PUMP") for d in decs if d.subject.startswith("MDC_DEV_PUMP")]
    assert rates == ["52.5", "63"]
    bed = next(d for d in decs if d.subject.startswith("MDC_DEV_MON"))
    assert bed.value("MDC_PRESS_BLD_ART_ABP_MEAN") == "72"
    assert bed.patient == "bed-1"
    first = decs[0]
    assert first.profile_id == "IHE_PCD_001"
    assert first.value("MDC_DRUG_NAME_TYPE") == "norepinephrine"


async def test_alarm_identity_survives_a_restart_between_raise_and_clear(tmp_path: Path) -> None:
    """The clear of an alarm raised before a restart names the same alarm: the follower finds
    the raise in the journal."""
    data = tmp_path / "data"
    ehr = EhrSimulator()
    port = await ehr.start()
    try:
        async with await AsyncJournal.open(data, gateway_id="gw") as journal:
            out = make_out(journal, port)
            async with running(out):
                await journal.record_events("pump-1", [alarm("alarm_raised")])
                async with asyncio.timeout(10):
                    await ehr.wait_for(lambda r: len(r) == 1)
                    await out.drained.wait()
        async with (
            await AsyncJournal.open(data, gateway_id="gw") as journal,
            running(make_out(journal, port)),
        ):
            await journal.record_events("pump-1", [alarm("alarm_cleared")])
            async with asyncio.timeout(10):
                await ehr.wait_for(lambda r: len(r) == 2)
    finally:
        await ehr.stop()
    raised, cleared = ehr.received
    assert raised.value("MDC_ATTR_EVENT_PHASE") == "start"
    assert cleared.value("MDC_ATTR_EVENT_PHASE") == "end"
    assert raised.filler == cleared.filler


async def test_dec_is_repeated_every_period_without_a_change(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """With nothing changing, a DEC still goes out every dec_period_s."""
    out = make_out(journal, ehr.port, dec_period_s=0.2)
    async with running(out):
        out.pump_state("pump-1", {"status": "stopped", "drug": "norepinephrine", "bed": "bed-1"})
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) >= 3)
    decs = ehr.of("DEC")
    assert len(decs) >= 3
    assert {d.value("MDC_PUMP_STAT") for d in decs} == {"stopped"}


async def test_an_event_that_cannot_be_built_does_not_hold_back_the_next(
    journal: AsyncJournal, ehr: EhrSimulator
) -> None:
    """A journaled event whose data the builders do not expect (a rate given as a string) is
    logged and skipped; the events after it still reach the EHR, in order."""
    bad = RawEvent(
        {**rate_changed_json(63.0, "bad"), "to": {"rate": {"value": "63", "unit": "mL/h"}}}
    )
    out = make_out(journal, ehr.port)
    async with running(out):
        await journal.record_events("pump-1", [bad, rate_changed(64.0, "good")])
        async with asyncio.timeout(10):
            await ehr.wait_for(lambda r: len(r) == 1)
            await out.drained.wait()
    assert [m.value("command_id") for m in ehr.received] == ["good"]
