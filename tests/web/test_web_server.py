"""daemon.web_server: serves exactly the dashboard's files with the right types, /config.json,
and nothing else (no traversal), over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.web_server import HTTP_LOG, MAX_HEAD_BYTES, MAX_HEADERS, WebServer, load_assets

WEB = Path(__file__).resolve().parents[2] / "daemon" / "web"
WS_URL = "ws://127.0.0.1:9001/"


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response to EOF: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "content_type", "file"),
    [
        ("/", "text/html; charset=utf-8", "index.html"),
        ("/index.html", "text/html; charset=utf-8", "index.html"),
        ("/app.js", "text/javascript; charset=utf-8", "app.js"),
        ("/mqtt.min.js", "text/javascript; charset=utf-8", "mqtt.min.js"),
        ("/style.css", "text/css; charset=utf-8", "style.css"),
        ("/app.js?v=2", "text/javascript; charset=utf-8", "app.js"),
    ],
)
async def test_serves_each_dashboard_file_with_its_content_type(
    path: str, content_type: str, file: str
) -> None:
    """Every asset comes back byte-for-byte with its type, length and nosniff/CSP headers."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        status, headers, body = await get(srv.port, path)
    assert status == 200
    assert headers["content-type"] == content_type
    assert body == (WEB / file).read_bytes()
    assert headers["content-length"] == str(len(body))
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["connection"] == "close"


@pytest.mark.asyncio
async def test_config_json_tells_the_page_the_broker_and_gateway() -> None:
    """/config.json is JSON with the broker WebSocket URL and the gateway id given to the server."""
    async with WebServer(broker_ws_url="wss://gw.example:8884/mqtt", gateway="bed-7_gw") as srv:
        status, headers, body = await get(srv.port, "/config.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "broker_ws_url": "wss://gw.example:8884/mqtt",
        "gateway": "bed-7_gw",
    }
    assert "default-src 'self'" in headers["content-security-policy"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        "/__init__.py",
        "/../web_server.py",
        "/..%2fweb_server.py",
        "/%2e%2e/%2e%2e/pyproject.toml",
        "//etc/passwd",
        "/web/index.html",
        "/index.html/",
        "/missing.js",
        "/./app.js",
    ],
)
async def test_anything_but_the_dashboard_files_is_404(path: str) -> None:
    """Python files, parent directories (plain or percent-encoded) and unknown names: 404."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        status, headers, body = await get(srv.port, path)
    assert status == 404
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body == b"404 Not Found\n"


@pytest.mark.asyncio
async def test_head_sends_headers_only_and_other_methods_are_405() -> None:
    """HEAD: same headers, no body; POST: 405 with Allow."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        status, headers, body = await get(srv.port, "/app.js", method="HEAD")
        assert status == 200
        assert body == b""
        assert headers["content-length"] == str(len((WEB / "app.js").read_bytes()))
        status, headers, _ = await get(srv.port, "/", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw", [b"GET\r\n\r\n", b"GET index.html HTTP/1.1\r\n\r\n", b"GET / SPDY/3\r\n\r\n"]
)
async def test_malformed_request_lines_are_400(raw: bytes) -> None:
    """A request line without three parts, an absolute path or HTTP/1.x is refused."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        status, _, _ = await request(srv.port, raw)
    assert status == 400


@pytest.mark.asyncio
async def test_oversized_request_head_is_refused_and_the_server_keeps_serving() -> None:
    """A header line over the cap is refused (400) by the parser before any handler runs,
    without buffering it all; the next request works."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        huge = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n\r\n"
        status, _, body = await request(srv.port, huge)
        assert status == 400
        assert b"app.js" not in body
        status, _, _ = await get(srv.port, "/")
    assert status == 200


@pytest.mark.asyncio
async def test_too_many_header_lines_are_refused() -> None:
    """More than MAX_HEADERS header lines: 400, the dashboard is not served."""
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n"
        status, _, body = await request(srv.port, head)
        assert status == 400
        assert b"<html" not in body.lower()
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 10 + b"\r\n"
        status, _, _ = await request(srv.port, head)
    assert status == 200


@pytest.mark.asyncio
async def test_url_names_the_bound_port() -> None:
    """port=0 picks a free port, and url is http://<host>:<that port>/."""
    async with WebServer("127.0.0.1", 0, broker_ws_url=WS_URL, gateway="demo") as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}/"
        status, _, _ = await get(srv.port, "/")
    assert status == 200


def test_assets_are_the_package_files_with_known_extensions_only() -> None:
    """__init__.py is package machinery, not an asset; every served file is in daemon/web."""
    assets = load_assets()
    assert set(assets) == {"/", "/index.html", "/app.js", "/mqtt.min.js", "/style.css"}
    assert assets["/"] == assets["/index.html"]


@pytest.mark.parametrize(
    ("url", "gateway", "field"),
    [
        ("http://127.0.0.1:9001/", "demo", "broker_ws_url"),
        ("127.0.0.1:9001", "demo", "broker_ws_url"),
        (WS_URL, "de/mo", "gateway"),
        (WS_URL, "#", "gateway"),
        (WS_URL, "", "gateway"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(url: str, gateway: str, field: str) -> None:
    """The page cannot be told a non-WebSocket broker or a gateway id that is not a topic level."""
    with pytest.raises(ConfigError, match=field):
        WebServer(broker_ws_url=url, gateway=gateway)


def test_vendored_mqtt_client_keeps_its_licence_and_version() -> None:
    """The vendored MQTT.js names its version and carries its MIT licence text."""
    head = (WEB / "mqtt.min.js").read_text()[:3000]
    assert "MQTT.js 5.16.0" in head
    assert "The MIT License (MIT)" in head
    assert "Permission is hereby granted" in head


def test_a_package_without_index_html_is_a_config_error() -> None:
    """Missing package data (e.g. a wheel built without it) fails at start, naming the file."""
    with pytest.raises(ConfigError, match=r"tests\.web: index\.html is missing"):
        load_assets("tests.web")


@pytest.mark.asyncio
async def test_a_silent_client_is_dropped_after_the_head_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that connects and sends nothing (or half a head) is disconnected, not kept."""
    monkeypatch.setattr("daemon.web_server.HEAD_TIMEOUT_S", 0.3)
    async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
        for first in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(first)
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # EOF: the server closed it
            writer.close()
            await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_malformed_request_is_logged_as_one_warning_line_without_traceback() -> None:
    """Junk on the port is the client's problem: one WARNING naming the peer, no traceback."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    HTTP_LOG.addHandler(handler)
    try:
        async with WebServer(broker_ws_url=WS_URL, gateway="demo") as srv:
            status, _, _ = await request(srv.port, b"GET index.html HTTP/1.1\r\n\r\n")
    finally:
        HTTP_LOG.removeHandler(handler)
    assert status == 400
    assert [r.levelname for r in records] == ["WARNING"]
    assert records[0].exc_info is None
    assert records[0].getMessage().startswith("bad HTTP request from 127.0.0.1: ")
