"""Imports flow one way (daemon -> sim_devices -> drivers -> protocol), protocol/ stays pure, and
inside daemon/ the sub-packages import only the layers below their own."""

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

# daemon/'s sub-packages, lowest layer first. A module may import its own package and the layers
# below; packages that share a layer do not import each other.
DAEMON_LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"base"}),  # root exception, config, time, data dir, logging, envelope, topics
    frozenset({"journal"}),  # hash chain, dedupe, outboxes, retention, writer thread, history
    frozenset({"mqtt", "ihe", "pharmacy"}),  # the edges: MQTT, IHE PCD, drug libraries
    frozenset({"core"}),  # supervisor, channels, command gate, vitals
    frozenset({"ui", "fleet"}),  # watch, dashboard, HTTP API, replay; fleet collector and store
    frozenset({"demo"}),  # the demo bedside in one process
    frozenset({"cli"}),  # the console script
)
# What may sit at daemon/'s top level: nothing but the package itself.
DAEMON_TOP_LEVEL: frozenset[str] = frozenset()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports_with_names(path: Path) -> set[str]:
    """Like :func:`_imports`, and ``from a import b`` also counts as ``a.b`` (b may be a module:
    ``from daemon import journal``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = _imports(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _daemon_unit(module: str) -> str | None:
    """The layer unit of a daemon module: its sub-package, or None for a top-level module."""
    parts = module.split(".")
    if parts[0] != "daemon" or len(parts) < 2:
        return None
    if (ROOT / "daemon" / parts[1]).is_dir():
        return parts[1]
    return None


def _layer_of(package: str) -> int:
    for index, layer in enumerate(DAEMON_LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"daemon/{package}/ is in no layer of DAEMON_LAYERS")


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


def test_daemon_sub_packages_import_only_lower_layers() -> None:
    """Inside daemon/, a sub-package imports only itself and the layers below it."""
    offenders = []
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if len(rel.parts) < 3:
            continue  # a top-level module (see DAEMON_TOP_LEVEL)
        own = rel.parts[1]
        for name in _imports_with_names(path):
            other = _daemon_unit(name)
            if other is None or other == own:
                continue
            if _layer_of(other) >= _layer_of(own):
                offenders.append(f"{rel} ({own}) imports {name} ({other})")
    assert offenders == []


def test_every_daemon_sub_package_has_a_layer() -> None:
    """Each folder of daemon/ that holds Python code is a package placed in DAEMON_LAYERS."""
    packages = {
        path.parent.relative_to(ROOT / "daemon").parts[0]
        for path in (ROOT / "daemon").rglob("*.py")
        if path.parent != ROOT / "daemon"
    }
    placed = set().union(*DAEMON_LAYERS)
    assert sorted(packages - placed) == []


def test_daemon_top_level_holds_only_the_listed_modules() -> None:
    """daemon/'s top level holds no module but those listed: each one is in a layer's package."""
    top = {path.stem for path in (ROOT / "daemon").glob("*.py")} - {"__init__"}
    assert sorted(top - DAEMON_TOP_LEVEL) == []
