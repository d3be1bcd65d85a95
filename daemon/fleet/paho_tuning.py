"""What the fleet collector changes in paho-mqtt and aiomqtt, at the pinned versions.

The collector's hot path (docs/performance.md, "Fleet ingest") and its fail-fast TLS start
need things neither library offers publicly: an inbox paho's ``on_message`` fills with plain
tuples (no ``aiomqtt.Message`` per message), a read buffer under paho's socket, one queued
write for a batch's PUBACKs, and the CONNACK wait ended by a TLS alert. Each reaches into
private attributes (``_client``, ``_sock``, ``_packet_queue``, ``_connected``); they are kept
here, in one place, and covered by the tests on real sockets, so an upgrade that moves them
fails those tests instead of silently slowing or hanging the collector.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from typing import Any

import aiomqtt
from paho.mqtt import client as mqtt_client

#: CONNACK reason codes that refuse this client's identity or credentials (MQTT 3.1.1: 2, 4,
#: 5; MQTT 5: client id not valid, bad user name or password, not authorized, banned, bad
#: authentication method); the others (server busy, unavailable, quota) may pass
LOGIN_REFUSALS = frozenset({2, 4, 5, 133, 134, 135, 138, 140})


def is_login_refusal(rc: object) -> bool:
    return getattr(rc, "value", rc) in LOGIN_REFUSALS


#: the reason in an SSLError's text: ``[SSL: CODE] reason (_ssl.c:NNNN)``
_SSL_REASON = re.compile(r"\[SSL: \w+\] (.+?)(?: \(_ssl\.c:\d+\))?$")


class TlsAlert(aiomqtt.MqttError):
    """The broker ended the TLS session with an alert before its CONNACK."""


def fail_fast_on_tls_alert(client: aiomqtt.Client) -> None:
    """Make a TLS alert received before the CONNACK end the connection attempt at once.

    With TLS 1.3 the broker checks the client certificate after the client's handshake is
    done: a refused (or missing) certificate shows as an alert on the first read, which paho
    only logs ("failed to receive on socket: [SSL: ...]") while aiomqtt waits for a CONNACK
    until its timeout and then reports a bare timeout. This hook (paho's ``on_log``, removed
    once connected: it would format every later log line) fails the attempt with the alert's
    reason."""
    connected = client._connected  # aiomqtt has no public hook for this
    loop_thread = threading.get_ident()

    def on_log(_client: object, _userdata: object, level: int, text: str) -> None:
        # reads run in the loop's thread; the handshake (in an executor) raises by itself
        in_loop = threading.get_ident() == loop_thread
        alert = level == mqtt_client.MQTT_LOG_ERR and "[SSL:" in text
        if in_loop and alert and not connected.done():
            found = _SSL_REASON.search(text)
            connected.set_exception(TlsAlert(found[1] if found else text))

    client._client.on_log = on_log


#: a PUBACK without reason code or properties (success), as paho's ``ack(mid, 1)`` builds it
PUBACK = struct.Struct("!BBH")  # type, remaining length (2), message id
PUBACK_TYPE = 0x40  # MQTT control packet type 4, no flags
_READ_SIZE = 256 * 1024


class BufferedSocket:
    """paho's socket with a read buffer.

    paho reads a packet in three or more ``recv`` calls (command byte, length bytes, body);
    this one reads up to :data:`_READ_SIZE` at once and serves paho's small reads from it.
    ``pending()`` tells how much is buffered: aiomqtt's read callback keeps calling paho while
    it is non-zero (as for an SSL socket's own buffer), so buffered bytes are never left
    waiting for the socket to be readable again. Everything else goes to the socket."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(max(size, _READ_SIZE))  # BlockingIOError passes
            if len(data) <= size:
                return data
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: aiomqtt.Client) -> None:
    """Put :class:`BufferedSocket` under paho (a plain TCP socket only: TLS has its own
    buffer and ``pending``). Nothing was buffered before, so nothing is lost."""
    paho_client = client._client
    sock = paho_client._sock
    if isinstance(sock, socket.socket) and not hasattr(sock, "pending"):
        paho_client._sock = BufferedSocket(sock)


#: a message as paho gave it: (topic bytes, payload, qos, message id)
Received = tuple[bytes, bytes, int, int]


class Inbox:
    """Messages received and not yet taken, as plain tuples.

    aiomqtt reads the socket in the event loop's thread, so paho calls :meth:`on_message`
    there; a call from another thread (paho's connect runs in an executor) is handed to the
    loop, so the list is only ever touched in the loop's thread. The broker sends at most the
    Receive Maximum of unacknowledged messages, which bounds the list."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ready = asyncio.Event()  # set while a message is waiting
        self.full = asyncio.Event()  # set once ``full_at`` messages are waiting
        self.full_at = 1  # the ingest task sets its batch size
        self._items: list[Received] = []
        self._loop = loop
        self._thread = threading.get_ident()

    def on_message(self, _client: object, _userdata: object, message: Any) -> None:
        item: Received = (message._topic, message.payload, message.qos, message.mid)
        if threading.get_ident() == self._thread:
            self._put(item)
        else:
            self._loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: Received) -> None:
        self._items.append(item)
        self.ready.set()
        if len(self._items) >= self.full_at:
            self.full.set()

    @property
    def size(self) -> int:
        return len(self._items)

    def take(self, limit: int) -> list[Received]:
        """Up to ``limit`` messages, oldest first."""
        items = self._items
        self.full.clear()
        if len(items) <= limit:
            self._items = []
            self.ready.clear()
            return items
        self._items = items[limit:]
        return items[:limit]
