"""The gateway's HTTP server: the reference web dashboard, its history API and ``/metrics``.

Built on aiohttp: one asyncio-native, well-kept dependency gives the HTTP/1.1 server (request
parsing with size limits, keep-alive timeouts, graceful shutdown), routing, WebSocket support
should the page ever talk to the gateway directly, and a test client; Starlette would need
uvicorn beside it (two layers and two release trains) for the same job. The hand-written
stream server this replaces was fine for a handful of files but not for an API.

What a client gets:

- ``/`` and ``/index.html``, and every other top-level file of ``daemon/ui/web`` whose extension is
  in :data:`CONTENT_TYPES` (so never ``__init__.py``), with the right ``Content-Type``;
- ``/config.json``: ``{"broker_ws_url": ..., "gateway": ..., "api": ...}``: where the page
  connects and whether the history API is served;
- ``/api/events`` and ``/api/history`` when given a :class:`~daemon.journal.history.History`
  (JSON; a bad query is ``400`` listing every problem by parameter; ``503`` while the journal is
  not open yet); ``/metrics`` (Prometheus text format) when given a ``CollectorRegistry``;
- ``404`` for anything else, ``405`` (with ``Allow: GET, HEAD``) for methods other than
  ``GET``/``HEAD``, ``400`` for a malformed request line, a request target that is not an
  absolute path, a header line over :data:`MAX_HEAD_BYTES` or more than :data:`MAX_HEADERS`
  header lines (aiohttp's parser enforces both before any handler runs).

No path traversal is possible by construction: the files are read once at start into a table
keyed by their URL path, and the raw request path (not a normalised one) is only ever looked up
in that table, never joined to a filesystem path (``/../x``, ``%2e%2e``, ``/./app.js``,
``//etc/passwd`` are all just unknown keys). Every response carries the security headers below
and closes the connection; an idle or silent client is dropped after :data:`HEAD_TIMEOUT_S`, and
a response the client does not read within :data:`WRITE_TIMEOUT_S` is abandoned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemon.base.envelope import encode
from daemon.base.errors import ConfigError
from daemon.base.payload import JsonObject
from daemon.base.topics import is_topic_id
from daemon.journal.history import History, HistoryQueryError, JournalNotReady, problems_document
from daemon.journal.records import JournalError
from drivers.clock import utc_now

log = structlog.get_logger(__name__)

WEB_PACKAGE = "daemon.ui.web"
MAX_HEAD_BYTES = 8 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 2.0


class _ClientErrorsAsOneLine(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback: a port scanner or a
    confused client would flood the journal with tracebacks about *their* bytes. A client's
    protocol error (a 4xx from the parser) becomes one WARNING line naming the peer and the
    problem; our own errors (5xx, handler exceptions) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "bad HTTP request from %s: %s", (peer, exc.message)
            record.exc_info, record.exc_text = None, None
        return True


HTTP_LOG = logging.getLogger("infusiond.http")
HTTP_LOG.addFilter(_ClientErrorsAsOneLine())
ALLOWED_METHODS = ("GET", "HEAD")

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

_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def config_document(broker_ws_url: str | None, gateway: str, *, api: bool = False) -> bytes:
    """The ``/config.json`` body; ``ConfigError`` names a bad ``broker_ws_url`` or ``gateway``.

    ``broker_ws_url`` None: the broker has no WebSocket listener the page could use (the page
    then says so); ``api``: whether ``/api/...`` history is served.
    """
    if broker_ws_url is not None and not broker_ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"broker_ws_url {broker_ws_url!r}: must start with ws:// or wss://")
    if not is_topic_id(gateway):
        raise ConfigError(f"gateway {gateway!r}: not a valid topic level")
    document: JsonObject = {"broker_ws_url": broker_ws_url, "gateway": gateway}
    if api:
        document["api"] = {"events": "api/events", "history": "api/history"}
    return encode(document)


def _plain(status: int) -> web.Response:
    return web.Response(
        status=status,
        body=f"{status} {_REASONS[status]}\n".encode(),
        content_type="text/plain",
        charset="utf-8",
    )


def _json(status: int, document: object) -> web.Response:
    return web.Response(status=status, body=encode(document), content_type="application/json")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Method and target checks before routing; plain-text error bodies; the write deadline."""
    if request.method not in ALLOWED_METHODS:
        response: web.StreamResponse = _plain(405)
        response.headers["Allow"] = ", ".join(ALLOWED_METHODS)
        return response
    if not request.raw_path.startswith("/"):
        return _plain(400)
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = _plain(404)
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.prepare(request)
            await response.write_eof()
    except TimeoutError:
        log.warning("http_client_too_slow", path=request.path[:100])
        if request.transport is not None:
            request.transport.abort()
        raise
    return response


async def _metrics(registry: CollectorRegistry, request: web.Request) -> web.StreamResponse:
    """``/metrics``: the registry in Prometheus text format."""
    del request
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: the security headers, and the connection closes after it."""
    del request
    for name, value in SECURITY_HEADERS:
        response.headers[name] = value
    response.headers["Connection"] = "close"  # aiohttp has already chosen its headers here
    response.force_close()


class WebServer:
    """Serves the dashboard; ``async with WebServer(...) as srv: print(srv.url)``.

    ``port=0`` picks a free port. ``broker_ws_url`` (``ws://host:port/``) and ``gateway`` are
    what the page is told by ``/config.json``; a page opened from another machine replaces a
    loopback broker host with the host it loaded the page from. ``history`` serves
    ``/api/events`` and ``/api/history``; ``metrics_registry`` serves ``/metrics``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        broker_ws_url: str | None,
        gateway: str,
        history: History | None = None,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._host = host
        self._port = port
        self._config = config_document(broker_ws_url, gateway, api=history is not None)
        self._history = history
        self._registry = metrics_registry
        self._clock = clock
        self._assets: dict[str, Asset] = {}
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (valid inside ``async with``)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("WebServer is not running")
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def url(self) -> str:
        """``http://host:port/`` of the page (a wildcard bind is shown as 127.0.0.1)."""
        host = "127.0.0.1" if self._host in {"", "0.0.0.0", "::"} else self._host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def app(self) -> web.Application:
        """The aiohttp application (routes, middleware, headers); assets must be loaded."""
        app = web.Application(middlewares=[_guard])
        app.on_response_prepare.append(_secure)
        history, registry = self._history, self._registry
        if history is not None:
            app.router.add_get("/api/events", functools.partial(self._api, history.events))
            app.router.add_get("/api/history", functools.partial(self._api, history.series))
        if registry is not None:
            app.router.add_get("/metrics", functools.partial(_metrics, registry))
        app.router.add_get("/{path:.*}", self._asset)
        return app

    async def __aenter__(self) -> Self:
        assets = await asyncio.to_thread(load_assets)
        assets["/config.json"] = Asset(self._config, "application/json")
        self._assets = assets
        runner = web.AppRunner(
            self.app(),
            handle_signals=False,
            access_log=None,
            logger=HTTP_LOG,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            keepalive_timeout=HEAD_TIMEOUT_S,
            max_line_size=MAX_HEAD_BYTES,
            max_field_size=MAX_HEAD_BYTES,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"http listen {self._host}:{self._port}: {exc.strerror}") from exc
        self._runner = runner
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0].split("#", 1)[0]
        asset = self._assets.get(path)
        if asset is None:
            return _plain(404)
        return web.Response(body=asset.body, headers={"Content-Type": asset.content_type})

    async def _api(
        self,
        read: Callable[..., Awaitable[JsonObject]],
        request: web.Request,
    ) -> web.StreamResponse:
        try:
            document = await read(list(request.query.items()), now=self._clock())
        except HistoryQueryError as exc:
            return _json(400, problems_document(exc.by_parameter))
        except (JournalNotReady, JournalError) as exc:
            return _json(503, {"error": "not_ready", "message": str(exc)})
        return _json(200, document)
