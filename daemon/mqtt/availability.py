"""Per-pump availability: ``pump/<id>/availability``, retained, plain ``online``/``offline``.

Plain text, as Home Assistant's MQTT availability expects by default. ``online`` only while the
pump answers (its state's ``connection`` is ``online``); ``offline`` while it is connecting or
offline. The gateway's own availability is ``bridge/state`` (its last will says ``offline`` when
the gateway dies): a consumer needs both, as the discovery configs list them
(daemon/mqtt/discovery.py).
"""

from __future__ import annotations

from collections.abc import Callable

ONLINE = b"online"
OFFLINE = b"offline"


def availability_of(connection: str | None) -> bytes:
    """``online`` for a pump whose connection is ``online``, else ``offline``."""
    return ONLINE if connection == "online" else OFFLINE


class Availability:
    """Publishes each pump's availability when it changes (``publish(topic, payload)`` is the
    bridge's retained publish, which republishes it after every reconnect)."""

    def __init__(
        self, topic_of: Callable[[str], str], publish: Callable[[str, bytes], None]
    ) -> None:
        self._topic_of = topic_of
        self._publish = publish
        self.current: dict[str, bytes] = {}

    def update(self, pump_id: str, connection: str | None) -> None:
        """The pump's connection as its latest state says; publishes only a change."""
        value = availability_of(connection)
        if self.current.get(pump_id) != value:
            self.current[pump_id] = value
            self._publish(self._topic_of(pump_id), value)
