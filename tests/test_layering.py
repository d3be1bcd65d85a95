"""Imports flow one way (daemon -> sim_devices -> drivers -> protocol), and protocol/ stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"daemon", "drivers", "protocol", "sim_devices"}
ALLOWED = {
    "protocol": set(),
    "drivers": {"protocol"},  # only protocol.errors / shared value types
    "sim_devices": {"drivers", "protocol"},
    "daemon": {"drivers", "protocol", "sim_devices"},  # sim_devices only for `demo`/`sim`
}
IMPURE = {"asyncio", "socket", "time", "selectors", "subprocess", "threading", "random"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downwards(package: str) -> None:
    """Each package imports only the packages below it in the layer diagram."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_protocol_is_pure() -> None:
    """protocol/ never imports asyncio, the clock, sockets or randomness."""
    offenders = []
    for path in sorted((ROOT / "protocol").rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] in IMPURE:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_drivers_import_only_protocol_errors() -> None:
    """drivers/ may use protocol.errors (the root exception) and nothing else of protocol/."""
    offenders = []
    for path in sorted((ROOT / "drivers").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("protocol") and name != "protocol.errors":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []
