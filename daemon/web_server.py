"""A tiny static-file HTTP server for the reference web dashboard (the files of ``daemon/web``).

Built on plain asyncio streams rather than on the ``websockets`` package's HTTP hooks: the job
is a ``GET`` of a handful of fixed files plus one JSON document, with no upgrade; ``websockets``
is only present as a transitive dependency of amqtt (not one of ours), and its request hooks
differ between its legacy and new implementations. A capped request-head parser of a few dozen
lines is easier to audit than that coupling.

What the browser gets:

- ``/`` and ``/index.html``, and every other top-level file of ``daemon/web`` whose extension is
  in :data:`CONTENT_TYPES` (so never ``__init__.py``), with the right ``Content-Type``;
- ``/config.json``: ``{"broker_ws_url": ..., "gateway": ...}``, where the page connects;
- ``404`` for anything else, ``405`` for methods other than ``GET``/``HEAD``, ``400`` for a
  malformed request line, ``431`` for a request head over :data:`MAX_HEAD_BYTES` or
  :data:`MAX_HEADERS` lines.

No path traversal is possible by construction: the files are read once at start into a table
keyed by their URL path, and a request path is only ever looked up in that table, never joined
to a filesystem path (``/../x``, ``%2e%2e``, ``//etc/passwd`` are all just unknown keys).
Every response closes the connection; a client has :data:`HEAD_TIMEOUT_S` to send its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from importlib.resources import files
from types import TracebackType
from typing import Self

from daemon.errors import ConfigError
from daemon.topics import is_topic_id

WEB_PACKAGE = "daemon.web"
MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

# The page needs its own files and a WebSocket to the broker (any host: a tablet reaches the
# gateway by its LAN address); nothing inline, nothing from elsewhere. MQTT.js runs its keepalive
# timers in a blob: worker so that background tabs are not throttled into a disconnect.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "connect-src 'self' ws: wss:",
        "img-src 'self' data:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    )
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True)
class Asset:
    """One servable file: its bytes and content type."""

    body: bytes
    content_type: str


def load_assets(package: str = WEB_PACKAGE) -> dict[str, Asset]:
    """Every top-level file of ``package`` with a known extension, keyed by URL path.

    Blocking (reads files): call it off the event loop.
    """
    assets: dict[str, Asset] = {}
    for entry in files(package).iterdir():
        suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets["/" + entry.name] = Asset(entry.read_bytes(), CONTENT_TYPES[suffix])
    if "/index.html" not in assets:
        raise ConfigError(f"{package}: index.html is missing (package data not installed?)")
    assets["/"] = assets["/index.html"]
    return assets


def config_document(broker_ws_url: str, gateway: str) -> bytes:
    """The ``/config.json`` body; ``ConfigError`` names a bad ``broker_ws_url`` or ``gateway``."""
    if not broker_ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"broker_ws_url {broker_ws_url!r}: must start with ws:// or wss://")
    if not is_topic_id(gateway):
        raise ConfigError(f"gateway {gateway!r}: not a valid topic level")
    return json.dumps({"broker_ws_url": broker_ws_url, "gateway": gateway}).encode()


def _response(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + body


def _error(status: int, *, head_only: bool = False) -> bytes:
    text = f"{status} {_REASONS[status]}\n".encode()
    return _response(status, "text/plain; charset=utf-8", text, head_only=head_only)


def route(head: bytes, assets: dict[str, Asset]) -> bytes:
    """The full response (status line, headers, body) to one request head. Pure."""
    lines = head.split(b"\r\n")
    if len([line for line in lines if line]) > MAX_HEADERS + 1:
        return _error(431)
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return _error(400)
    method, target = parts[0], parts[1]
    if method not in {"GET", "HEAD"}:
        return _error(405)
    head_only = method == "HEAD"
    path = target.split("?", 1)[0].split("#", 1)[0]
    asset = assets.get(path)
    if asset is None:
        return _error(404, head_only=head_only)
    return _response(200, asset.content_type, asset.body, head_only=head_only)


class WebServer:
    """Serves the dashboard; ``async with WebServer(...) as srv: print(srv.url)``.

    ``port=0`` picks a free port. ``broker_ws_url`` (``ws://host:port/``) and ``gateway`` are
    what the page is told by ``/config.json``; a page opened from another machine replaces a
    loopback broker host with the host it loaded the page from.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, broker_ws_url: str, gateway: str
    ) -> None:
        self._host = host
        self._port = port
        self._config = config_document(broker_ws_url, gateway)
        self._assets: dict[str, Asset] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port (valid inside ``async with``)."""
        if self._server is None:
            raise RuntimeError("WebServer is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http://host:port/`` of the page (a wildcard bind is shown as 127.0.0.1)."""
        host = "127.0.0.1" if self._host in {"", "0.0.0.0", "::"} else self._host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def __aenter__(self) -> Self:
        assets = await asyncio.to_thread(load_assets)
        assets["/config.json"] = Asset(self._config, "application/json")
        self._assets = assets
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD_BYTES
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                response = _error(431)
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # gone or silent: nothing useful to answer
            else:
                response = route(head[:-4], self._assets)
            writer.write(response)
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away mid-response
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()
