"""Reading a stored or received JSON object field by field: each reader returns the typed value
or raises :class:`~daemon.base.errors.PayloadError` naming the field (``where.key``), so a
malformed journal row or message says what is wrong instead of failing with a ``KeyError``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from daemon.base.errors import PayloadError
from daemon.base.timefmt import parse_ts

_E = TypeVar("_E", bound=enum.Enum)

JsonObject = dict[str, Any]
"""A decoded JSON object: only at the edges (MQTT payloads, journal rows, HTTP bodies, TOML
files), read field by field with the readers below into a typed value."""


def required(data: Mapping[str, Any], key: str, where: str) -> object:
    """``data[key]``, which must be there (it may be null)."""
    if key not in data:
        raise PayloadError(f"{where}.{key}: missing")
    return data[key]


def text(data: Mapping[str, Any], key: str, where: str) -> str:
    """A required string."""
    value = required(data, key, where)
    if not isinstance(value, str):
        raise PayloadError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def optional_text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    """A string, or None when the key is absent or null."""
    return text(data, key, where) if data.get(key) is not None else None


def as_object(data: object, where: str) -> Mapping[str, Any]:
    """``data`` itself, which must be a JSON object (``where`` names it)."""
    if not isinstance(data, Mapping):
        raise PayloadError(f"{where}: expected an object, got {data!r}")
    return data


def obj(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """A required JSON object."""
    value = required(data, key, where)
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where}.{key}: expected an object, got {value!r}")
    return value


def flag(data: Mapping[str, Any], key: str, where: str, *, default: bool = False) -> bool:
    """A boolean; ``default`` when the key is absent."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise PayloadError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def choice(kind: type[_E], data: Mapping[str, Any], key: str, where: str) -> _E:
    """A required member of the enum ``kind``, by its value."""
    value = required(data, key, where)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in kind)
        raise PayloadError(f"{where}.{key}: expected one of {allowed}, got {value!r}") from None


def timestamp(data: Mapping[str, Any], key: str, where: str) -> datetime:
    """A required RFC 3339 timestamp, as an aware UTC datetime."""
    value = text(data, key, where)
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise PayloadError(f"{where}.{key}: {exc}") from None


def optional_decimal(data: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    """A number (or a number's text) as a Decimal, or None when absent or null."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"{where}.{key}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise PayloadError(f"{where}.{key}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise PayloadError(f"{where}.{key}: expected a finite number, got {value!r}")
    return number
