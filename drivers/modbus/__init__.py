"""Modbus TCP/RTU pump driver driven by declarative register-map profiles (drivers/profiles/)."""

from drivers.modbus.bus import DEFAULT_REGISTRY, BusRegistry, ModbusBus, parse_url
from drivers.modbus.driver import ModbusPumpDriver
from drivers.modbus.regmap import (
    Field,
    ProfileError,
    RegisterMap,
    RegType,
    Span,
    Table,
    Value,
    WordOrder,
    load_profile,
    parse_profile,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "BusRegistry",
    "Field",
    "ModbusBus",
    "ModbusPumpDriver",
    "ProfileError",
    "RegType",
    "RegisterMap",
    "Span",
    "Table",
    "Value",
    "WordOrder",
    "load_profile",
    "parse_profile",
    "parse_url",
]
