"""The envelope every published payload but ``bridge/state`` carries (docs/integration-guide.md).

``{"schema": "infusiond.<kind>/1", "gateway", "session", "seq", "ts", "data"}``, encoded as
compact, deterministic JSON (sorted keys, no spaces, UTF-8, no NaN/Infinity), so equal payloads
are equal bytes: retained messages only change when their content does, and hashes are stable.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from daemon.base.payload import JsonObject
from daemon.base.timefmt import format_ts


class Kind(enum.StrEnum):
    """Payload kinds and their schema strings (``Kind.PUMP_STATE.schema``)."""

    BRIDGE_INFO = "bridge.info"
    PUMP_STATE = "pump.state"
    PUMP_EVENT = "pump.event"
    PUMP_COMMAND_RESULT = "pump.command.result"
    VITALS_STATE = "vitals.state"
    PUMP_COMMAND = "pump.command"  # inbound only; commands may carry it
    LIBRARY_RESPONSE = "bridge.library.response"  # answer to bridge/request/library
    EVENTS_RESPONSE = "bridge.events.response"  # answer to bridge/request/events (backfill)
    BRIDGE_HEALTH = "bridge.health"  # retained bridge/health (daemon/mqtt/health.py)

    @property
    def schema(self) -> str:
        """``infusiond.<kind>/1``: the value of the envelope's ``schema`` key."""
        return f"infusiond.{self.value}/1"


SCHEMA_IDS = tuple(kind.schema for kind in Kind)  # what bridge/info lists under "schemas"

BRIDGE_ONLINE = b'{"state":"online"}'
BRIDGE_OFFLINE = b'{"state":"offline"}'


def _json_default(value: object) -> object:
    """Our value types as JSON: Decimal -> number, aware datetime -> RFC 3339, Enum -> value."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"non-finite Decimal {value} is not JSON")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(obj: Any) -> bytes:
    """Compact deterministic JSON bytes (sorted keys, UTF-8); Decimal, datetime and Enum
    values are converted; raises ``ValueError`` on NaN/Infinity."""
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    ).encode()


def envelope(
    kind: Kind,
    *,
    gateway: str,
    session: str,
    seq: int,
    ts: datetime,
    data: JsonObject,
) -> JsonObject:
    """The envelope as a dict (``encode`` it to publish)."""
    return {
        "schema": kind.schema,
        "gateway": gateway,
        "session": session,
        "seq": seq,
        "ts": format_ts(ts),
        "data": data,
    }
