"""The envelope every published payload but ``bridge/state`` carries (DESIGN.md section 6).

``{"schema": "infusiond.<kind>/1", "gateway", "session", "seq", "ts", "data"}``, encoded as
compact, deterministic JSON (sorted keys, no spaces, UTF-8, no NaN/Infinity), so equal payloads
are equal bytes: retained messages only change when their content does, and hashes are stable.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any

from daemon.timefmt import format_ts


class Kind(enum.StrEnum):
    """Payload kinds and their schema strings (``Kind.PUMP_STATE.schema``)."""

    BRIDGE_INFO = "bridge.info"
    PUMP_STATE = "pump.state"
    PUMP_EVENT = "pump.event"
    PUMP_COMMAND_RESULT = "pump.command.result"
    VITALS_STATE = "vitals.state"
    PUMP_COMMAND = "pump.command"  # inbound only; commands may carry it

    @property
    def schema(self) -> str:
        """``infusiond.<kind>/1``: the value of the envelope's ``schema`` key."""
        return f"infusiond.{self.value}/1"


SCHEMA_IDS = tuple(kind.schema for kind in Kind)  # what bridge/info lists under "schemas"

BRIDGE_ONLINE = b'{"state":"online"}'
BRIDGE_OFFLINE = b'{"state":"offline"}'


def encode(obj: Any) -> bytes:
    """Compact deterministic JSON bytes; raises ``ValueError`` on NaN/Infinity."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def envelope(
    kind: Kind,
    *,
    gateway: str,
    session: str,
    seq: int,
    ts: datetime,
    data: dict[str, Any],
) -> dict[str, Any]:
    """The envelope as a dict (``encode`` it to publish)."""
    return {
        "schema": kind.schema,
        "gateway": gateway,
        "session": session,
        "seq": seq,
        "ts": format_ts(ts),
        "data": data,
    }
