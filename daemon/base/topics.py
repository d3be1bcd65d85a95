"""The MQTT topic tree under ``infusiond/<gateway_id>/`` (docs/asyncapi.yaml)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Ids become topic levels: no wildcards, no separators, no control characters.
TOPIC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TOPIC_ID = re.compile(TOPIC_ID_PATTERN)


CAPPED_ID_CHARS = 64


def capped_id(value: str) -> str:
    """An id taken from a topic, as logs and the journal show it: itself when at most 64
    characters, else its first 64 characters plus its length and a hash of the whole (two long
    ids stay distinct; a 60,000-character id costs about 120 bytes, not 60 KB). Anything UTF-8
    cannot encode is backslash-escaped."""
    if len(value) <= CAPPED_ID_CHARS and value.isascii():
        return value
    safe = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(safe) <= CAPPED_ID_CHARS:
        return safe
    digest = hashlib.sha256(safe.encode("utf-8")).hexdigest()[:16]
    return f"{safe[:CAPPED_ID_CHARS]}...[{len(value)} chars, sha256:{digest}]"


def is_topic_id(value: str) -> bool:
    """True when ``value`` is safe as one topic level (gateway, pump and bed ids)."""
    return _TOPIC_ID.match(value) is not None


@dataclass(frozen=True)
class Topics:
    """Topic names for one gateway."""

    gateway_id: str

    def __post_init__(self) -> None:
        if not is_topic_id(self.gateway_id):
            raise ValueError(f"gateway id {self.gateway_id!r} is not a valid topic level")

    @property
    def root(self) -> str:
        return f"infusiond/{self.gateway_id}"

    @property
    def bridge_state(self) -> str:
        return f"{self.root}/bridge/state"

    @property
    def bridge_info(self) -> str:
        return f"{self.root}/bridge/info"

    @property
    def bridge_health(self) -> str:
        return f"{self.root}/bridge/health"

    def pump_availability(self, pump_id: str) -> str:
        """Retained plain ``online``/``offline`` (daemon/mqtt/availability.py)."""
        return f"{self.root}/pump/{pump_id}/availability"

    @property
    def command_filter(self) -> str:
        """The subscription that receives every pump's commands."""
        return f"{self.root}/pump/+/command"

    def pump_state(self, pump_id: str) -> str:
        return f"{self.root}/pump/{pump_id}/state"

    def pump_event(self, pump_id: str) -> str:
        return f"{self.root}/pump/{pump_id}/event"

    def pump_command(self, pump_id: str) -> str:
        return f"{self.root}/pump/{pump_id}/command"

    def pump_command_result(self, pump_id: str) -> str:
        return f"{self.root}/pump/{pump_id}/command/result"

    def vitals_state(self, bed_id: str) -> str:
        return f"{self.root}/vitals/{bed_id}/state"

    def pump_id_of_command(self, topic: str) -> str | None:
        """The pump id of a command topic, or None when ``topic`` is not one."""
        prefix = f"{self.root}/pump/"
        if not topic.startswith(prefix) or not topic.endswith("/command"):
            return None
        pump_id = topic[len(prefix) : -len("/command")]
        return pump_id if pump_id and "/" not in pump_id else None
