"""Headless Chromium driven over the DevTools protocol with the ``websockets`` package.

No Selenium/Playwright: Debian's ``chromium`` started with ``--remote-debugging-port=0`` writes
the port it chose to ``<user-data-dir>/DevToolsActivePort``; we attach to a fresh page target in
flat-session mode and send CDP commands over the one browser WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
START_TIMEOUT_S = 30.0
POLL_S = 0.05
MAX_MESSAGE = 64 * 1024 * 1024  # screenshots arrive base64 in one message

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class CdpError(RuntimeError):
    """A CDP command failed, or the page did something we consider an error."""


@dataclass
class Page:
    """One page target: evaluate JS, wait for DOM conditions, take screenshots."""

    ws: ClientConnection
    session: str
    ids: itertools.count[int]
    pending: dict[int, asyncio.Future[dict[str, Any]]]
    console_errors: list[str] = field(default_factory=list)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session:  # the browser target has none
            message["sessionId"] = self.session
        await self.ws.send(json.dumps(message))
        return await future

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises awaited); page exceptions raise CdpError."""
        reply = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {text}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy (there is no DOM event to await from here)."""
        last: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await self.evaluate(expression)
                    if last:
                        return last
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            body = await self.evaluate("document.body ? document.body.innerText : ''")
            raise CdpError(
                f"timed out after {timeout} s waiting for {expression!r} (last {last!r});\n"
                f"console errors: {self.console_errors}\npage text:\n{body}"
            ) from None

    async def type_into(self, element_id: str, text: str) -> None:
        """Focus an input, clear it and type ``text`` as keyboard input."""
        await self.evaluate(
            f"(() => {{ const e = document.getElementById({json.dumps(element_id)});"
            " e.focus(); e.select && e.select(); e.value = ''; return true; })()"
        )
        await self.call("Input.insertText", {"text": text})

    async def click(self, element_id: str) -> None:
        """A real mouse click at the centre of the element."""
        box = await self.evaluate(
            f"(() => {{ const e = document.getElementById({json.dumps(element_id)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    async def set_viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen of ``width`` x ``height`` CSS pixels (a laptop, a tablet)."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page, written to ``path``."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        reply = await self.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1},
            },
        )  # fmt: skip
        png = base64.b64decode(reply["data"])
        path.write_bytes(png)
        return png


async def _reader(ws: ClientConnection, pages: dict[str, Page], pending: dict[int, Any]) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if "id" in message:
            future = pending.pop(message["id"], None)
            if future is None or future.done():
                continue
            if "error" in message:
                future.set_exception(CdpError(str(message["error"])))
            else:
                future.set_result(message.get("result", {}))
            continue
        page = pages.get(message.get("sessionId", ""))
        if page is None:
            continue
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            page.console_errors.append(
                str(details.get("exception", {}).get("description") or details.get("text"))
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            page.console_errors.append(" ".join(str(a.get("value")) for a in params["args"]))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            page.console_errors.append(str(params["entry"].get("text")))


async def _devtools_port(profile: Path, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Port and browser path from DevToolsActivePort (a file: polled with a deadline)."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            if proc.poll() is not None:
                raise CdpError(f"chromium exited with {proc.returncode}")
            lines = marker.read_text().split("\n") if marker.exists() else []
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                return int(lines[0]), lines[1].strip()
            await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def chromium_page(workdir: Path, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with one page of ``width`` x ``height`` CSS pixels."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True)
    log = (workdir / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        port, path = await _devtools_port(profile, proc)
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=MAX_MESSAGE) as ws:
            ids = itertools.count(1)
            pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
            pages: dict[str, Page] = {}
            reader = asyncio.create_task(_reader(ws, pages, pending), name="cdp-reader")
            try:
                browser = Page(ws, "", ids, pending)  # browser-level commands: no session
                target = await browser.call("Target.createTarget", {"url": "about:blank"})
                attached = await browser.call(
                    "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
                )
                page = Page(ws, attached["sessionId"], ids, pending)
                pages[page.session] = page
                for domain in ("Page", "Runtime", "Log"):
                    await page.call(f"{domain}.enable")
                await page.set_viewport(width, height)
                yield page
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def navigate(page: Page, url: str) -> None:
    """Load ``url`` and wait for the document to be complete."""
    await page.call("Page.navigate", {"url": url})
    await page.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")
