"""``[http]`` in the configuration: off by default; ``listen`` is HOST:PORT, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError

BASE = 'gateway_id = "gw"\ndata_dir = "{data}"\n'


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "infusiond.toml"
    path.write_text(BASE.format(data=tmp_path / "d") + extra)
    return path


def test_http_is_off_by_default(tmp_path: Path) -> None:
    """Without an [http] section the daemon serves no HTTP at all."""
    assert load_config(write(tmp_path, "")).http is None


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:0", "::1", 0), ("gw.local:80", "gw.local", 80)],
)
def test_listen_gives_host_and_port(tmp_path: Path, listen: str, host: str, port: int) -> None:
    """HOST:PORT, IPv6 in brackets; port 0 means any free port."""
    config = load_config(write(tmp_path, f'[http]\nlisten = "{listen}"\n'))
    assert config.http is not None
    assert (config.http.host, config.http.port, config.http.broker_ws_url) == (host, port, None)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ('listen = "8080"', "http.listen"),
        ('listen = "127.0.0.1:99999"', "0..65535"),
        ('listen = "::1:8080"', "brackets"),
        ('listen = "127.0.0.1:80"\nbroker_ws_url = "mqtt://x:1883"', "http.broker_ws_url"),
        ('broker_ws_url = "ws://x:9001/"', "http.listen"),
        ('listen = "127.0.0.1:80"\nport = 1', "http.port"),
    ],
)
def test_bad_http_sections_name_the_key(tmp_path: Path, section: str, words: str) -> None:
    """A bad address, a non-WebSocket broker URL, a missing listen or an unknown key: the
    error names the key (and the limit)."""
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(write(tmp_path, f"[http]\n{section}\n"))
