"""The CQI report's listed items (overrides, catches, changes at the pump, library changes)
and their JSON as the report publishes it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity
from protocol.verdict import LibraryIdentity, Outcome

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True, slots=True)
class OverrideItem:
    """A listed override (``gateway``: the hospital report's, None for one journal)."""

    gateway: str | None
    ts: str
    pump_id: str
    drug: str
    profile: str
    command_id: str
    clinician: str | None
    reason: str | None
    rules: tuple[str, ...]

    def to_json(self) -> JsonObject:
        return _listed_json(self)


@dataclass(frozen=True, slots=True)
class CatchItem:
    """A listed catch: the rejected command and the accepted one that followed."""

    gateway: str | None
    pump_id: str
    drug: str
    profile: str
    rejected_command: str
    rejected_at: str
    accepted_command: str
    accepted_at: str
    minutes: float

    def to_json(self) -> JsonObject:
        return _listed_json(self)


@dataclass(frozen=True, slots=True)
class ObservedItem:
    """A listed change at the pump outside the library, with the verdict it would have had."""

    gateway: str | None
    ts: str
    pump_id: str
    drug: str
    profile: str
    rules: tuple[str, ...]
    verdict: Outcome
    rate: Quantity | None
    dose: Quantity | None

    def to_json(self) -> JsonObject:
        return _listed_json(self)


@dataclass(frozen=True, slots=True)
class LibraryChangeItem:
    """A listed library change (``old``/``new`` are published as ``from``/``to``)."""

    gateway: str | None
    ts: str
    old: LibraryIdentity | None = field(metadata={"json": "from"})
    new: LibraryIdentity | None = field(metadata={"json": "to"})
    via: str | None
    by: str | None

    def to_json(self) -> JsonObject:
        return _listed_json(self)


def _listed_json(item: DataclassInstance) -> JsonObject:
    """A listed item as the report publishes it: its fields in order (``gateway`` first and
    only when set), named by their ``json`` metadata when the key differs, tuples as lists,
    enums by value, quantities and libraries in their stored key order."""
    out: JsonObject = {}
    for spec in fields(item):
        value = getattr(item, spec.name)
        if spec.name == "gateway" and value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Outcome):
            value = value.value
        elif isinstance(value, Quantity):
            value = stored_order(value.to_json())
        elif isinstance(value, LibraryIdentity):
            value = stored_order(value.to_dict())
        out[spec.metadata.get("json", spec.name)] = value
    return out


def stored_order(obj: JsonObject) -> JsonObject:
    """``obj`` with its keys sorted: the report has always listed quantities and libraries as
    its sources store them (the journal's canonical JSON and PostgreSQL's JSONB both give
    ``unit`` before ``value``, ``name``, ``sha256``, ``version``), and its bytes stay so."""
    return dict(sorted(obj.items()))


def _tagged(gateway: str | None, item: JsonObject) -> JsonObject:
    """``item``, with ``gateway`` first when there is one (the hospital report)."""
    return item if gateway is None else {"gateway": gateway, **item}
