"""The CQI report's facts: what a source (a journal, the fleet store) saw, typed and
source-neutral, each read from its JSON once with a ``PayloadError`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from daemon.base import payload
from daemon.base.errors import PayloadError
from daemon.base.payload import JsonObject
from daemon.base.quantities import Quantity, optional_json, optional_quantity
from protocol.verdict import LibraryIdentity, Outcome

if TYPE_CHECKING:
    pass


def library_from_json(data: object, *, where: str) -> LibraryIdentity | None:
    """A ``{name, version, sha256}`` object (None for ``null``); ``PayloadError`` naming
    ``where`` when it is something else."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise PayloadError(f"{where}: expected a library object or null, got {data!r:.60}")
    name, version, sha256 = (
        payload.optional_text(data, k, where) for k in ("name", "version", "sha256")
    )
    if name is None or version is None or sha256 is None:
        raise PayloadError(f"{where}: a library needs name, version and sha256")
    return LibraryIdentity(name, version, sha256)


def rules_from_json(data: object, *, where: str) -> tuple[str, ...]:
    """The rule ids of a ``findings`` list (absent or null: none), in their order."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise PayloadError(f"{where}: expected a list of findings, got {data!r:.60}")
    rules = []
    for i, finding in enumerate(data):
        rule = finding.get("rule") if isinstance(finding, Mapping) else None
        if not isinstance(rule, str):
            raise PayloadError(f"{where}[{i}].rule: expected a string, got {rule!r:.60}")
        rules.append(rule)
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class VerdictSeen:
    """What the report reads of a verdict (docs/check.md): the outcome, which library judged
    (None: a verdict a fleet source derived from an event), the rule ids of its findings and
    the rate and dose it names. Parsed once where the verdict JSON is read, so that a verdict
    without a known outcome is an error naming the row, never a programming counted as none
    of accept, confirm and reject."""

    outcome: Outcome
    rules: tuple[str, ...] = ()
    library: LibraryIdentity | None = None
    rate: Quantity | None = None
    dose: Quantity | None = None

    @classmethod
    def from_json(cls, data: object, *, where: str) -> VerdictSeen:
        """Read a verdict object; ``PayloadError`` naming ``where`` and the field."""
        if not isinstance(data, Mapping):
            raise PayloadError(f"{where}: expected a verdict object, got {data!r:.60}")
        try:
            outcome = Outcome(data.get("verdict"))
        except ValueError:
            raise PayloadError(
                f"{where}.verdict: expected accept, confirm or reject, got "
                f"{data.get('verdict')!r:.60}"
            ) from None
        return cls(
            outcome,
            rules_from_json(data.get("findings"), where=f"{where}.findings"),
            library_from_json(data.get("library"), where=f"{where}.library"),
            optional_quantity(data.get("rate"), where=f"{where}.rate"),
            optional_quantity(data.get("dose"), where=f"{where}.dose"),
        )

    def to_json(self) -> JsonObject:
        """The verdict object with what the report keeps (findings carry only their rule)."""
        out: JsonObject = {
            "verdict": self.outcome.value,
            "rate": optional_json(self.rate),
            "dose": optional_json(self.dose),
            "findings": [{"rule": rule} for rule in self.rules],
        }
        if self.library is not None:
            out["library"] = self.library.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class ProgramSeen:
    """The pump runs ``drug`` under ``profile`` from now on (not bound to the window)."""

    pump: str
    drug: str
    profile: str


@dataclass(frozen=True, slots=True)
class Judged:
    """The library judged a command; once per id counts."""

    ts: str
    pump: str
    command_id: str
    verdict: VerdictSeen


@dataclass(frozen=True, slots=True)
class Overridden:
    """A clinician confirmed a command the library asked to confirm (``rules``: the rule ids
    of the findings confirmed)."""

    ts: str
    pump: str
    command_id: str
    clinician: str | None
    reason: str | None
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command passed the gate and went to the pump."""

    ts: str
    pump: str
    command_id: str


@dataclass(frozen=True, slots=True)
class RateChangeSeen:
    """The pump's rate changed: through the gate (``gated``) or at its front panel."""

    ts: str
    pump: str
    gated: bool


@dataclass(frozen=True, slots=True)
class ObservedOutside:
    """A rate set at the pump that the library would not accept outright."""

    ts: str
    pump: str
    verdict: VerdictSeen


@dataclass(frozen=True, slots=True)
class LibraryChangeSeen:
    """A new library; ``program`` (drug, profile; when the event names both) is what ``pump``
    runs under it."""

    ts: str
    pump: str
    old: LibraryIdentity | None
    new: LibraryIdentity | None
    via: str | None
    by: str | None
    program: tuple[str, str] | None = None

    @classmethod
    def from_json(cls, ts: str, pump: str, event: Mapping[str, object], where: str) -> Self:
        """A ``library_changed`` event's data; ``PayloadError`` naming ``where`` and the field."""
        drug, profile = (
            payload.optional_text(event, "drug", where),
            payload.optional_text(event, "profile", where),
        )
        return cls(
            ts,
            pump,
            library_from_json(event.get("from"), where=f"{where}.from"),
            library_from_json(event.get("to"), where=f"{where}.to"),
            payload.optional_text(event, "via", where),
            payload.optional_text(event, "by", where),
            (drug, profile) if drug and profile else None,
        )


Fact = (
    ProgramSeen
    | Judged
    | Overridden
    | Accepted
    | RateChangeSeen
    | ObservedOutside
    | LibraryChangeSeen
)
