"""The answers of one command: where they go (``ReplyTo``, the result sink), the outcome kept
for its id, and the ``readback`` a result carries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from daemon.core.channel import Channel
from daemon.core.program import Program
from daemon.mqtt.command_parse import applied, failed, first_of, uncertain
from drivers.base import PumpStatus, WriteOutcome, WriteResult


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """MQTT v5 request/response properties to honour on the answers."""

    response_topic: str
    correlation_data: bytes | None = None


ResultSink = Callable[[str, dict[str, Any], "ReplyTo | None"], Awaitable[None]]


def kept_outcome(
    pump_id: str,
    fp: str,
    answer: dict[str, Any],
    before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The outcome kept for a command id: what a duplicate is told, plus the pump, the
    payload's fingerprint and (once accepted) the device's state before the write."""
    kept = {**first_of(answer), "pump": pump_id, "fingerprint": fp}
    if "readback" in answer:  # for a final result repeated after a restart
        kept["readback"] = answer["readback"]
    if before is not None:
        kept["before"] = before
    return kept


def readback_of(
    channel: Channel, status: PumpStatus | None, program: Program | None = None
) -> dict[str, Any]:
    """The result's ``readback``; its dose under ``program`` (default: the channel's)."""
    if status is None:
        return {}
    running = program or channel.program
    dose = channel.dose_at(running, status.rate_ml_h)
    return {
        "status": status.state.value,
        "rate": {"value": float(status.rate_ml_h), "unit": "mL/h"},
        "dose": (
            None if dose is None else {"value": float(round(dose, 6)), "unit": running.dose_unit}
        ),
    }


def answer_for(channel: Channel, command_id: str, result: WriteResult) -> dict[str, Any]:
    """The final result of a verified write: ``applied``, ``failed`` or ``uncertain``."""
    if result.outcome is WriteOutcome.APPLIED:
        return applied(command_id, readback=readback_of(channel, result.readback))
    if result.outcome is WriteOutcome.FAILED:
        code = "not_sent" if result.detail.startswith("not sent") else "device_rejected"
        return failed(
            command_id,
            error={"code": code, "message": result.detail or "device refused"},
            readback=readback_of(channel, result.readback) if result.readback else None,
        )
    return uncertain(
        command_id,
        error={"code": "device_timeout", "message": result.detail or "no answer"},
    )
