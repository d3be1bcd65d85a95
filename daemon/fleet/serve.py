"""``infusiond fleet serve``: the fleet page over HTTP (aiohttp), read from the fleet store.

- ``GET /``: the page (``daemon/fleet/page``: HTML, one script, one stylesheet; nothing from
  elsewhere, no inline script: a strict Content-Security-Policy says so);
- ``GET /fleet.js``, ``/fleet.css``: its files;
- ``GET /api/fleet``: the JSON the page polls (:func:`daemon.fleet.overview.fleet_overview`);
  ``503`` with ``{"error"}`` while the database cannot be read (the page shows it).

Read-only: one database connection, used by one request at a time and opened again after a
failure. The page is for a hospital's LAN; put it behind the site's reverse proxy for TLS and
logins (it shows gateway ids, pump ids and alarm codes, no patient data).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files

import psycopg
import structlog
from aiohttp import web

from daemon.base.payload import JsonObject
from daemon.fleet.errors import FleetError
from daemon.fleet.overview import fleet_overview
from daemon.fleet.store import Conn, connect
from drivers.clock import utc_now

log = structlog.get_logger(__name__)

PAGE_PACKAGE = "daemon.fleet.page"
DEFAULT_LISTEN = "127.0.0.1:8470"
_FILES = {
    "/": ("index.html", "text/html"),
    "/fleet.js": ("fleet.js", "text/javascript"),
    "/fleet.css": ("fleet.css", "text/css"),
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class FleetDb:
    """One connection to the store, one request at a time; reopened after a failure."""

    dsn: str
    _conn: Conn | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def overview(self) -> JsonObject:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await connect(self.dsn)
            try:
                return await fleet_overview(self._conn, now=utc_now())
            except psycopg.Error as exc:
                await self.close()
                raise FleetError(f"reading the fleet store failed: {exc}") from None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


_DB = web.AppKey("fleet_db", FleetDb)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); :class:`FleetError` naming ``--listen``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FleetError(f"--listen: {text!r} is not HOST:PORT with a port in 0..65535")
    return host, int(port)


def _static(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = files(PAGE_PACKAGE).joinpath(name).read_bytes()

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    return handler


async def _api(request: web.Request) -> web.Response:
    try:
        doc = await request.app[_DB].overview()
    except FleetError as exc:
        log.warning("fleet_page_db_error", error=str(exc))
        return web.json_response({"error": str(exc)}, status=503, headers=_HEADERS)
    return web.json_response(doc, headers=_HEADERS)


async def _no_icon(_request: web.Request) -> web.Response:
    return web.Response(status=204, headers=_HEADERS)  # browsers ask; there is none


def make_app(dsn: str) -> web.Application:
    """The page's application (routes only ``GET``/``HEAD``: anything else is 405)."""
    app = web.Application()
    app[_DB] = FleetDb(dsn)
    for path, (name, content_type) in _FILES.items():
        app.router.add_get(path, _static(name, content_type))
    app.router.add_get("/api/fleet", _api)
    app.router.add_get("/favicon.ico", _no_icon)

    async def _close(app: web.Application) -> None:
        await app[_DB].close()

    app.on_cleanup.append(_close)
    return app


@contextlib.asynccontextmanager
async def serving(dsn: str, host: str, port: int) -> AsyncIterator[int]:
    """Serve the page on ``host:port`` (0: any free port); yields the bound port."""
    runner = web.AppRunner(make_app(dsn), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise FleetError(f"--listen: cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0][1]
        log.info("fleet_page_listening", url=f"http://{host}:{bound}/")
        yield int(bound)
    finally:
        await runner.cleanup()


async def _serve_forever(dsn: str, host: str, port: int) -> None:
    async with serving(dsn, host, port) as bound:
        print(f"fleet page on http://{host}:{bound}/", flush=True)  # noqa: T201 - CLI output
        await asyncio.Event().wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond fleet serve``."""
    host, port = parse_listen(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.postgres, host, port))
    return 0
