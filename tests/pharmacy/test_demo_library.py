"""`infusiond demo --library PATH`: the demo runs the given library and SIGHUP reloads it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.e2e.test_demo import read_banner
from tests.pharmacy.harness import variant


async def next_info(port: int, *, not_version: str | None = None) -> dict[str, Any]:
    """The retained (then live) bridge/info data whose library version differs from
    ``not_version``."""
    async with (
        aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311, identifier="t-info"
        ) as client,
        asyncio.timeout(20),
    ):
        await client.subscribe("infusiond/demo/bridge/info", qos=1)
        async for m in client.messages:
            data: dict[str, Any] = json.loads(m.payload)["data"]  # type: ignore[arg-type]
            if data["library"]["version"] != not_version:
                return data
    raise AssertionError("no bridge/info")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_demo_runs_the_given_library_and_sighup_installs_the_edited_file(
    tmp_path: Path,
) -> None:
    """bridge/info names the --library file's version; after the file is edited and the
    process gets SIGHUP, bridge/info names the new version (the demo needs no signature)."""
    lib = tmp_path / "lib.toml"
    lib.write_bytes(variant(version="2026.12.7"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "demo",
            *("--data-dir", str(tmp_path / "d")),
            *("--library", str(lib)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        banner = read_banner(proc)
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        first = await next_info(port)
        assert first["library"]["version"] == "2026.12.7"
        lib.write_bytes(variant(version="2026.12.8", soft_max="0.8"))
        proc.send_signal(signal.SIGHUP)
        second = await next_info(port, not_version="2026.12.7")
        assert second["library"]["version"] == "2026.12.8"
        assert proc.poll() is None  # SIGHUP reloads; it does not end the demo
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
