"""docs/architecture.md stays true: every daemon package is on its map, in the layer the
layering test enforces, and every path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_layering import DAEMON_LAYERS

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text()


def _layer_rows() -> dict[str, int]:
    """``package -> layer`` from the page's table of daemon/'s sub-packages."""
    rows = re.findall(r"^\| (\d) \| `(\w+)/` \|", PAGE, flags=re.MULTILINE)
    return {package: int(layer) for layer, package in rows}


def test_every_daemon_package_is_on_the_map_in_its_enforced_layer() -> None:
    """The page lists each package of daemon/ once, at the layer tests/test_layering.py checks."""
    packages = {p.parent.name for p in (ROOT / "daemon").glob("*/__init__.py")}
    rows = _layer_rows()
    assert set(rows) == packages
    enforced = {name: n for n, layer in enumerate(DAEMON_LAYERS, start=1) for name in layer}
    assert rows == enforced


def test_every_path_the_page_names_exists() -> None:
    """A module or folder named in backquotes (``daemon/core/gate.py``, ``drivers/``) exists."""
    named = set(
        re.findall(r"`((?:daemon|drivers|protocol|sim_devices|tests|docs)/[\w/.*-]*)`", PAGE)
    )
    assert named, "the page names no paths"
    missing = sorted(p for p in named if "*" not in p and not (ROOT / p).exists())
    globbed = sorted(p for p in named if "*" in p and not list(ROOT.glob(p)))
    assert missing == []
    assert globbed == []


def test_every_daemon_module_the_page_names_exists() -> None:
    """A module named relative to daemon/ (``core/gate.py``, ``mqtt/refusals.py``) exists."""
    packages = "|".join(sorted(name for layer in DAEMON_LAYERS for name in layer))
    named = set(re.findall(rf"`((?:{packages})/\w+\.py)`", PAGE))
    assert named, "the page names no daemon modules"
    assert sorted(p for p in named if not (ROOT / "daemon" / p).exists()) == []
