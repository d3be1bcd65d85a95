"""Fixtures for the IHE PCD tests: a real journal file, the simulated EHR, an Hl7Out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest_asyncio

from daemon.ihe.messages import Patient
from daemon.ihe.outbound import Hl7Out, Hl7OutSettings
from daemon.journal import AsyncJournal
from sim_devices.ehr import EhrSimulator

NOW = datetime(2026, 12, 6, 1, 30, tzinfo=UTC)


def patient_of(bed: str | None) -> Patient:
    """Bed ids stand in for patient ids, as when no patient id is configured."""
    return Patient(bed or "unassigned")


@pytest_asyncio.fixture
async def journal(tmp_path: Path) -> AsyncIterator[AsyncJournal]:
    async with await AsyncJournal.open(tmp_path / "data", gateway_id="gw") as j:
        yield j


@pytest_asyncio.fixture
async def ehr() -> AsyncIterator[EhrSimulator]:
    sim = EhrSimulator()
    await sim.start()
    yield sim
    await sim.stop()


def make_out(journal: AsyncJournal, port: int, **kw: float) -> Hl7Out:
    settings = Hl7OutSettings(
        host="127.0.0.1",
        port=port,
        ack_timeout_s=kw.get("ack_timeout_s", 5.0),
        dec_period_s=kw.get("dec_period_s", 3600.0),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    clock: Callable[[], datetime] = lambda: NOW  # noqa: E731
    return Hl7Out(settings, journal, clock=clock, patient_of=patient_of)
