"""A `phd` pump in the configuration: address, baud rate and the syringe it must hold."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.base.config import load_config
from daemon.base.errors import ConfigError
from daemon.core.parts import make_driver
from drivers.phd import PhdPumpDriver

BASE = """gateway_id = "gw"

[[pumps]]
id = "pump-phd"
driver = "{driver}"
url = "{url}"
drug = "norepinephrine"
concentration = {{ value = 4, unit = "ug/mL" }}
diluent = "D5W"
route = "central"
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


def config_text(
    extra: str = "syringe_diameter_mm = 26.59", *, driver: str = "phd", url: str = "/dev/ttyUSB0"
) -> str:
    return BASE.format(driver=driver, url=url, extra=extra)


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "infusiond.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return str(exc.value)


def test_phd_pump_becomes_a_phd_driver_with_its_syringe(tmp_path: Path) -> None:
    """address 12, 19200 baud, 26.59 mm: make_driver builds the PHD driver with them."""
    path = tmp_path / "infusiond.toml"
    path.write_text(config_text("address = 12\nbaudrate = 19200\nsyringe_diameter_mm = 26.59"))
    pump = load_config(path).pumps[0]
    driver = make_driver(pump)
    assert isinstance(driver, PhdPumpDriver)
    assert driver.address == 12
    assert driver._configured_diameter == Decimal("26.59")
    assert driver._baudrate == 19200


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (config_text(""), "syringe_diameter_mm: required for phd pumps"),
        (config_text("syringe_diameter_mm = 60"), "less than or equal to 45"),
        (config_text("syringe_diameter_mm = 26.59\naddress = 100"), "less than or equal to 99"),
        (config_text(url="tcp://127.0.0.1:7010"), "phd pumps use socket://host:port"),
        (config_text("syringe_diameter_mm = 26.59\nwatchdog_s = 5"), "no communication watchdog"),
        (
            config_text(driver="newera", url="socket://127.0.0.1:7000"),
            "the syringe), and only for them",
        ),
    ],
)
def test_bad_phd_settings_name_the_key_and_the_limit(
    tmp_path: Path, text: str, needle: str
) -> None:
    """Each wrong setting is a ConfigError naming what is wrong; no driver is built."""
    message = error_of(tmp_path, text)
    assert needle in message
    assert "pumps[0]" in message
