"""Configuration: TOML + INFUSIOND_* environment; every error names the offending key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.base.config import Config, load_config
from daemon.base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "infusiond.example.toml"

PUMP = """
[[pumps]]
id = "{id}"
driver = "modbus"
url = "tcp://127.0.0.1:5020"
drug = "norepinephrine"
concentration = {{ value = 4, unit = "ug/mL" }}
diluent = "D5W"
route = "{route}"
library_profile = "adult-icu"
weight_kg = 70
{extra}
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.upper().startswith("INFUSIOND_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "infusiond.toml"
    path.write_text(text)
    return path


def pump(pump_id: str = "pump-1", extra: str = "", route: str = "central") -> str:
    return PUMP.format(id=pump_id, extra=extra, route=route)


def error_of(path: Path | None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return str(exc.value)


def test_shipped_example_loads() -> None:
    """systemd/infusiond.example.toml is a valid configuration with two pumps and one bed."""
    config = load_config(EXAMPLE)
    assert config.gateway_id == "bed-12-gw"
    assert [p.id for p in config.pumps] == ["pump-1", "pump-2"]
    assert config.pumps[0].poll_period_s == 1.0
    assert config.vitals[0].stale_after_s == 900
    assert config.control.enabled is False
    assert config.client_id == "infusiond-bed-12-gw"


def test_defaults(tmp_path: Path) -> None:
    """Minimal file: data dir in the XDG state dir, control off, local broker, 1 s polling."""
    config = load_config(write(tmp_path, 'gateway_id = "gw"\n' + pump()))
    assert config.data_dir == tmp_path / "state" / "infusiond"
    assert config.broker.host == "127.0.0.1"
    assert config.broker.port == 1883
    assert config.pumps[0].modbus_unit_id == 1
    assert config.pumps[0].register_map == "generic-pump-v1"
    assert config.library is None


def test_environment_overrides_the_file_with_nested_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INFUSIOND_BROKER__URL and friends override the file; lists take JSON."""
    path = write(
        tmp_path, 'gateway_id = "gw"\n[broker]\nurl = "mqtt://10.0.0.1"\nkeepalive_s = 20\n'
    )
    monkeypatch.setenv("INFUSIOND_BROKER__URL", "mqtts://broker.example:8884")
    monkeypatch.setenv("INFUSIOND_BROKER__USERNAME", "gw-user")
    monkeypatch.setenv("INFUSIOND_BROKER__PASSWORD", "s3cret")
    monkeypatch.setenv("INFUSIOND_CONTROL__ENABLED", "true")
    monkeypatch.setenv("INFUSIOND_CONTROL__ALLOWLIST", '["dr-a", "titration-app"]')
    config = load_config(path)
    assert config.broker.url == "mqtts://broker.example:8884"
    assert config.broker.port == 8884
    assert config.broker.uses_tls
    assert config.broker.keepalive_s == 20  # kept from the file
    assert config.broker.password is not None
    assert config.broker.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert config.control.allowlist == ["dr-a", "titration-app"]


def test_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file, the environment supplies everything."""
    monkeypatch.setenv("INFUSIOND_GATEWAY_ID", "gw-env")
    assert load_config(None).gateway_id == "gw-env"


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ("", "gateway_id", "required key missing"),
        ('gateway_id = "a/b"', "gateway_id", "pattern"),
        ('gateway_id = "gw"\ngatway = 1', "gatway", "unknown key"),
        ('gateway_id = "gw"\n[broker]\nurl = "http://x"', "broker.url", "scheme must be"),
        ('gateway_id = "gw"\n[broker]\nurl = "mqtt://:1883"', "broker.url", "host missing"),
        ('gateway_id = "gw"\n[broker]\nurl = "mqtt://h:99999"', "broker.url", "port"),
        ('gateway_id = "gw"\n[broker]\nkeepalive_s = 1', "broker.keepalive_s", "greater"),
        ('gateway_id = "gw"\n[broker]\npassword = "x"', "broker.username", "required when"),
        (
            'gateway_id = "gw"\n[broker]\nurl = "mqtt://h"\n[broker.tls]\n',
            "broker.tls",
            "only valid with an mqtts",
        ),
        (
            'gateway_id = "gw"\n[broker]\nurl = "mqtts://h"\n[broker.tls]\nca_file = "/nope.pem"',
            "broker.tls.ca_file",
            "Path does not point to a file",
        ),
        ('gateway_id = "gw"\n[control]\nenabled = true', "control.allowlist", "must not be empty"),
        (
            'gateway_id = "gw"\n' + pump(extra="poll_period_s = 0"),
            "pumps[0].poll_period_s",
            "greater than 0",
        ),
        ('gateway_id = "gw"\n' + pump(extra="poll_period_s = nan"), "pumps[0].poll_period_s", ""),
        ('gateway_id = "gw"\n' + pump(extra="address = 3"), "pumps[0].address", "only for newera"),
        ('gateway_id = "gw"\n' + pump(route="arterial"), "pumps[0].route", ""),
        ('gateway_id = "gw"\n' + pump() + pump("pump-2", "unit_id = 300"), "pumps[1].unit_id", ""),
        ('gateway_id = "gw"\n' + pump() + pump(), "pumps[1].id", "used twice"),
        ('gateway_id = "gw"\n[[vitals]]\nbed = "b"', "vitals[0].listen", "exactly one"),
        (
            'gateway_id = "gw"\n[[vitals]]\nbed = "b"\nlisten = "mllp://h"',
            "vitals[0].listen",
            "port missing",
        ),
    ],
)
def test_invalid_file_values_name_the_key(tmp_path: Path, text: str, key: str, needle: str) -> None:
    """Each invalid value fails with ConfigError naming the key path and the file."""
    message = error_of(write(tmp_path, text))
    assert f"{key}:" in message or f"{key} (" in message, message
    assert needle in message
    assert str(tmp_path / "infusiond.toml") in message


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("INFUSIOND_BROKER__URL", "ftp://x", "broker.url (from INFUSIOND_BROKER__URL)"),
        ("INFUSIOND_BROKER__KEEPALIVE_S", "soon", "broker.keepalive_s (from INFUSIOND_BROKER"),
        ("INFUSIOND_CONTROL__ENABLED", "true", "control.allowlist"),
        ("INFUSIOND_BROKER__NOPE", "1", "broker.nope (from INFUSIOND_BROKER__NOPE)"),
    ],
)
def test_invalid_environment_values_name_the_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, key: str
) -> None:
    """A bad override names the key and the INFUSIOND_ variable that supplied it."""
    monkeypatch.setenv(var, value)
    message = error_of(write(tmp_path, 'gateway_id = "gw"\n'))
    assert key in message, message


def test_environment_json_that_does_not_parse_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list override that is not JSON fails as ConfigError naming the field."""
    monkeypatch.setenv("INFUSIOND_PUMPS", "[not json")
    message = error_of(write(tmp_path, 'gateway_id = "gw"\n'))
    assert "pumps" in message


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A missing file or a TOML syntax error is a ConfigError naming the file (and line)."""
    assert "not found" in error_of(tmp_path / "missing.toml")
    message = error_of(write(tmp_path, 'gateway_id = "gw"\n[broker\n'))
    assert "not valid TOML" in message
    assert "line 2" in message


def test_newera_pump_defaults_and_checks(tmp_path: Path) -> None:
    """A newera pump takes socket:// or a serial path and refuses modbus-only keys."""
    text = pump().replace('driver = "modbus"', 'driver = "newera"')
    text = text.replace("tcp://127.0.0.1:5020", "socket://127.0.0.1:5021")
    config = load_config(write(tmp_path, 'gateway_id = "gw"\n' + text))
    assert config.pumps[0].newera_address == 0
    assert "pumps[0].unit_id" in error_of(
        write(tmp_path, 'gateway_id = "gw"\n' + text.replace("weight_kg", "unit_id = 2\nweight_kg"))
    )
    assert isinstance(config, Config)


def test_journal_retention_defaults_to_90_days(tmp_path: Path) -> None:
    """Without a [journal] section the journal keeps 90 days."""
    assert load_config(write(tmp_path, 'gateway_id = "gw"\n')).journal.retention_days == 90


@pytest.mark.parametrize("days", ["0", "-3", "36501", "1.5", '"ninety"'])
def test_journal_retention_out_of_range_or_not_an_integer_names_the_key(
    tmp_path: Path, days: str
) -> None:
    """A retention below 1 day, above 100 years, or not an integer fails naming the key."""
    message = error_of(write(tmp_path, f'gateway_id = "gw"\n[journal]\nretention_days = {days}\n'))
    assert "journal.retention_days" in message


def test_journal_retention_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INFUSIOND_JOURNAL__RETENTION_DAYS overrides the file; a bad value names the variable."""
    path = write(tmp_path, 'gateway_id = "gw"\n[journal]\nretention_days = 30\n')
    monkeypatch.setenv("INFUSIOND_JOURNAL__RETENTION_DAYS", "7")
    assert load_config(path).journal.retention_days == 7
    monkeypatch.setenv("INFUSIOND_JOURNAL__RETENTION_DAYS", "0")
    message = error_of(path)
    assert "journal.retention_days (from INFUSIOND_JOURNAL__RETENTION_DAYS)" in message
    assert "greater than or equal to 1" in message
