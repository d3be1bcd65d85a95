"""The gateway's parts built from a :class:`Config`: the checked drug library, one driver per
pump, each pump's program as configured (checked against the library), and the MQTT bridge."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from daemon.base.config import Config
from daemon.base.config_sections import PumpConfig
from daemon.base.errors import ConfigError
from daemon.core.program import Program
from daemon.journal.writer import AsyncJournal
from daemon.mqtt.bridge import MqttBridge
from daemon.pharmacy.reload import LibraryPolicy, read_library_file, vet_library
from drivers.base import Driver
from drivers.modbus import ModbusPumpDriver
from drivers.newera import NewEraPumpDriver
from drivers.phd import PhdPumpDriver
from protocol.library import DEFAULT_LIBRARY_PATH, Library
from protocol.units import UnitError, concentration_unit


def load_checked_library(cfg: Config) -> Library:
    """Load the configured (or shipped) library and refuse it if it is inconsistent, or
    unsigned (or badly signed) when ``library.require_signature`` is set."""
    path = library_path(cfg)
    policy = LibraryPolicy.from_config(cfg.library)
    data, signature = read_library_file(path)
    if not (policy.keys or policy.require_signature):
        signature = None  # no keys to check a signature file against: the file is the source
    return vet_library(data, source=str(path), signature=signature, policy=policy, uses={}).library


def library_path(cfg: Config) -> Path:
    """The configured library file, or the shipped example."""
    if cfg.library is not None and cfg.library.path is not None:
        return cfg.library.path
    return DEFAULT_LIBRARY_PATH


def make_driver(pump: PumpConfig) -> Driver:
    """The driver for one configured pump."""
    if pump.driver == "modbus":
        return ModbusPumpDriver(pump.url, pump.modbus_unit_id, profile=pump.register_map)
    if pump.driver == "phd":
        return PhdPumpDriver(
            pump.url,
            pump.newera_address,
            diameter_mm=Decimal(str(pump.syringe_diameter_mm)),
            baudrate=pump.baudrate or 9600,
        )
    return NewEraPumpDriver(pump.url, pump.newera_address, baudrate=pump.baudrate or 19200)


def configured_program(pump: PumpConfig, library: Library, index: int) -> Program:
    """The channel program from config, checked against the library (profile, drug, units)."""
    where = f"pumps[{index}]"
    if library.profile(pump.library_profile) is None:
        known = ", ".join(p.id for p in library.profiles)
        raise ConfigError(
            f"{where}.library_profile: {pump.library_profile!r} is not a profile of the drug "
            f"library (known: {known})"
        )
    drug = library.drug(pump.library_profile, pump.drug)
    if drug is None:
        raise ConfigError(
            f"{where}.drug: {pump.drug!r} is not in library profile {pump.library_profile!r}"
        )
    try:
        conc_unit = concentration_unit(pump.concentration.unit)
    except UnitError as exc:
        raise ConfigError(f"{where}.concentration.unit: {exc}") from None
    return Program(
        drug=drug.drug,
        concentration=Decimal(str(pump.concentration.value)),
        concentration_unit=conc_unit.code,
        dose_unit=drug.dose_unit,
        diluent=pump.diluent,
        route=pump.route,
        profile=pump.library_profile,
        weight_kg=Decimal(str(pump.weight_kg)) if pump.weight_kg is not None else None,
        line_shares=tuple(pump.line_shares),
        bed=pump.bed,
        baseline_sbp=Decimal(str(pump.baseline_sbp)) if pump.baseline_sbp is not None else None,
        chronic_hypertension=pump.chronic_hypertension,
    )


def mqtt_bridge(cfg: Config, journal: AsyncJournal) -> MqttBridge:
    """The gateway's MQTT bridge for ``cfg`` (the default ``Gateway.bridge_factory``)."""
    return MqttBridge(
        cfg.broker, gateway_id=cfg.gateway_id, client_id=cfg.client_id, outbox=journal
    )
