"""Replacing the running drug library without a restart (SIGHUP or MQTT push).

A candidate library goes through every step before it may run: size, signature (always
verified when one is given; required with ``library.require_signature``), parse, consistency
and worked examples (``library check``), and coverage (every pump keeps its profile, drug and
dose unit). Every reason it fails is collected, none short-circuits another that can still be
judged. A refused library changes nothing. An accepted one is journaled first (a
``library_changed`` event on every pump, carrying the old and new ``{name, version, sha256}``),
then swapped in with one assignment, so a command is checked either wholly under the old or
wholly under the new library; a command whose verdict is already computed finishes under the
library it was checked with. ``bridge/info`` is republished after the swap.

MQTT push: ``bridge/request/library`` carries ``{"id", "by": {"user"}, "library": "<TOML
text>", "signature"?: "<base64>"}`` (at most :data:`MAX_PUSH_BYTES`, never retained); the answer
on ``bridge/response/library`` is ``{"id", "status": "ok"|"error", "error"?: {"code", "message",
"reasons"}, "library": {name, version, sha256}}`` where ``library`` is the one running after
the request. Refusals are journaled with their reasons (a ``state`` row under ``@library``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import structlog

from daemon.base.config_sections import LibraryConfig
from daemon.base.events import LibraryChanged, Via
from daemon.base.payload import JsonObject
from daemon.journal.records import JournalError, JournalKind
from daemon.journal.writer import AsyncJournal
from daemon.pharmacy.signing import (
    SignatureError,
    TrustedKey,
    load_public_key,
    read_signature_file,
    verify_library,
)
from protocol.consistency import check_library
from protocol.errors import LibraryError
from protocol.library import MAX_LIBRARY_BYTES, Library, load_library_bytes
from protocol.verdict import LibraryIdentity

log = structlog.get_logger("infusiond.library")

#: under the MQTT packet cap (256 KiB), so an oversize push is answered, not dropped
MAX_PUSH_BYTES = 128 * 1024
MAX_ID_CHARS = 64
SIGNATURE_SUFFIX = ".sig"
#: the ``pump_id`` of the journal rows (kind ``state``) naming every pump's program
PROGRAMS_KEY = "@programs"
#: the ``pump_id`` of the journal rows (kind ``state``) recording refused libraries
LIBRARY_KEY = "@library"


class LibraryRefused(LibraryError):
    """A candidate library failed one or more steps; ``reasons`` lists every one."""

    def __init__(self, source: str, reasons: Sequence[str]) -> None:
        super().__init__(f"library {source} refused: " + "; ".join(reasons))
        self.reasons = tuple(reasons)


@dataclass(frozen=True)
class LibraryPolicy:
    """Who may replace the library, and with what proof."""

    require_signature: bool = False
    keys: tuple[TrustedKey, ...] = ()
    push_allowlist: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: LibraryConfig | None) -> LibraryPolicy:
        """Load the trusted keys (SignatureError naming a bad key file)."""
        if cfg is None:
            return cls()
        return cls(
            require_signature=cfg.require_signature,
            keys=tuple(load_public_key(path) for path in cfg.trusted_keys),
            push_allowlist=frozenset(cfg.push_allowlist),
        )


@dataclass(frozen=True)
class Use:
    """What a pump needs from the library: its profile, drug and dose unit."""

    profile: str
    drug: str
    dose_unit: str


@dataclass(frozen=True)
class Vetted:
    """A library that passed every step, and the key that signed it (if any)."""

    library: Library
    signed_by: str | None


def vet_library(
    data: bytes,
    *,
    source: str,
    signature: str | None,
    policy: LibraryPolicy,
    uses: Mapping[str, Use],
) -> Vetted:
    """Run every step on ``data``; LibraryRefused with all the reasons when any fails."""
    reasons: list[str] = []
    signed_by: str | None = None
    if signature is not None:
        try:
            signed_by = verify_library(policy.keys, data, signature).fingerprint
        except SignatureError as exc:
            reasons.append(str(exc))
    elif policy.require_signature:
        reasons.append("signature: required (library.require_signature) but none was given")
    try:
        library = load_library_bytes(data, source)
    except LibraryError as exc:
        raise LibraryRefused(source, [*reasons, f"LIB_LOAD: {exc}"]) from None
    reasons.extend(f"{p.rule}: {p.message}" for p in check_library(library))
    for pump_id, use in uses.items():
        drug = library.drug(use.profile, use.drug)
        if drug is None:
            reasons.append(
                f"LIB_PUMP_UNCOVERED: pump {pump_id} runs {use.drug} in profile {use.profile}, "
                "which this library does not have"
            )
        elif drug.dose_unit != use.dose_unit:
            reasons.append(
                f"LIB_PUMP_UNCOVERED: pump {pump_id} doses {use.drug} in {use.dose_unit}; "
                f"this library doses it in {drug.dose_unit}"
            )
    if reasons:
        raise LibraryRefused(source, reasons)
    return Vetted(library, signed_by)


def programs_row(library: Library, uses: Mapping[str, Use]) -> JsonObject:
    """The journal row (kind ``state``) that names each pump's drug and profile and the
    library in force: what the CQI report attributes commands and changes to."""
    return {
        "programs": {
            pump_id: {"drug": u.drug, "profile": u.profile, "dose_unit": u.dose_unit}
            for pump_id, u in uses.items()
        },
        "library": library.identity.to_dict(),
    }


def signature_path(path: Path) -> Path:
    """Where the signature of library file ``path`` lives: ``PATH.sig``."""
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def read_library_file(path: Path) -> tuple[bytes, str | None]:
    """The library bytes and, when ``PATH.sig`` exists, its signature text (blocking I/O)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LIBRARY_BYTES + 1)
    except OSError as exc:
        raise LibraryRefused(str(path), [f"LIB_LOAD: cannot read: {exc.strerror}"]) from None
    sig = signature_path(path)
    return data, read_signature_file(sig) if sig.exists() else None


@dataclass(frozen=True)
class PushRequest:
    """A parsed ``bridge/request/library`` payload."""

    id: str
    user: str
    library: bytes
    signature: str | None


class PushError(LibraryError):
    """A push request that is refused before its library is looked at."""

    def __init__(self, code: str, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


_KEYS = frozenset({"schema", "id", "by", "library", "signature"})


def parse_push(payload: bytes, *, retained: bool, allowed: frozenset[str]) -> PushRequest:
    """Validate the request's shape (size first, then JSON, then each field)."""
    if len(payload) > MAX_PUSH_BYTES:
        raise PushError(
            "too_large", f"payload is {len(payload)} bytes; limit {MAX_PUSH_BYTES}", None
        )
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PushError("bad_json", f"not JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise PushError("bad_request", "payload must be a JSON object", None)
    raw_id = body.get("id")
    request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_CHARS else None
    if retained:
        raise PushError("retained", "a retained library request is never applied", request_id)
    if request_id is None:
        raise PushError("bad_request", f"id: a string of 1 to {MAX_ID_CHARS} characters", None)
    extra = sorted(set(body) - _KEYS)
    if extra:
        raise PushError("bad_request", f"{extra[0]}: unknown field", request_id)
    by = body.get("by")
    user = by.get("user") if isinstance(by, dict) and set(by) == {"user"} else None
    if not isinstance(user, str) or not 0 < len(user) <= MAX_ID_CHARS:
        raise PushError("bad_request", 'by: must be {"user": "<id>"}', request_id)
    if user not in allowed:
        raise PushError(
            "not_authorized",
            f"by.user: {user!r} may not push libraries (library.push_allowlist)",
            request_id,
        )
    text = body.get("library")
    if not isinstance(text, str) or not text:
        raise PushError("bad_request", "library: the library's TOML text is required", request_id)
    signature = body.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise PushError("bad_request", "signature: must be a base64 string", request_id)
    return PushRequest(request_id, user, text.encode("utf-8"), signature)


@dataclass(frozen=True, slots=True)
class PushRefusal:
    """Why a push was refused: a code (``too_large``, ``refused``, ``journal_unavailable``...),
    a message and every reason."""

    code: str
    message: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """The answer to one push (``bridge/response/library``): ok, or its refusal; ``library``
    is the one running after the request."""

    request_id: str | None
    library: LibraryIdentity
    refusal: PushRefusal | None = None

    def to_json(self) -> JsonObject:
        """The response's ``data``: ``{"id", "status", "error"?, "library"}``."""
        if self.refusal is None:
            return {"id": self.request_id, "status": "ok", "library": self.library.to_dict()}
        return {
            "id": self.request_id,
            "status": "error",
            "error": {
                "code": self.refusal.code,
                "message": self.refusal.message,
                "reasons": list(self.refusal.reasons),
            },
            "library": self.library.to_dict(),
        }


@dataclass
class LibraryReloader:
    """Vets candidate libraries and swaps the running one (one at a time)."""

    policy: LibraryPolicy
    journal: AsyncJournal
    current: Callable[[], Library]
    install: Callable[[Library], None]
    uses: Callable[[], Mapping[str, Use]]
    now: Callable[[], datetime]
    #: every finished attempt, in order: None when installed (or unchanged), else the refusal
    outcomes: list[LibraryRefused | None] = field(default_factory=list)
    _lock: asyncio.Lock | None = None
    _finished: asyncio.Condition | None = None

    def _serial(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _condition(self) -> asyncio.Condition:
        if self._finished is None:
            self._finished = asyncio.Condition()
        return self._finished

    async def _record(self, outcome: LibraryRefused | None) -> None:
        if outcome is not None:  # the audit trail keeps refusals too (never fatal)
            try:
                await self.journal.append(
                    JournalKind.STATE,
                    {"library_refused": {"reasons": list(outcome.reasons)}},
                    pump_id=LIBRARY_KEY,
                    ts=self.now(),
                )
            except JournalError as exc:
                log.warning("library_refusal_not_journaled", error=str(exc))
        async with self._condition():
            self.outcomes.append(outcome)
            self._condition().notify_all()

    async def wait_outcomes(self, count: int) -> list[LibraryRefused | None]:
        """Wait until ``count`` attempts have finished (an event for tests and tools)."""
        async with self._condition():
            await self._condition().wait_for(lambda: len(self.outcomes) >= count)
            return list(self.outcomes)

    async def reload_file(self, path: Path) -> Library:
        """Re-read ``path`` (and ``PATH.sig``) and run it; LibraryRefused keeps the old one."""
        async with self._serial():
            try:
                try:
                    data, signature = await asyncio.to_thread(read_library_file, path)
                except SignatureError as exc:
                    raise LibraryRefused(str(path), [str(exc)]) from None
                vetted = vet_library(
                    data,
                    source=str(path),
                    signature=signature,
                    policy=self.policy,
                    uses=self.uses(),
                )
                await self._apply(vetted, via=Via.SIGHUP, by=None)
            except LibraryRefused as exc:
                await self._record(exc)
                raise
            except JournalError as exc:
                await self._record(LibraryRefused(str(path), [f"journal: {exc}"]))
                raise
            await self._record(None)
            return vetted.library

    async def push(self, payload: bytes, *, retained: bool) -> PushAnswer:
        """Handle one ``bridge/request/library`` payload; its answer."""
        request_id: str | None = None
        try:
            request = parse_push(payload, retained=retained, allowed=self.policy.push_allowlist)
            request_id = request.id
            async with self._serial():
                vetted = vet_library(
                    request.library,
                    source=f"push {request.id}",
                    signature=request.signature,
                    policy=self.policy,
                    uses=self.uses(),
                )
                await self._apply(vetted, via=Via.MQTT, by=request.user)
        except PushError as exc:
            log.warning("library_push_refused", id=exc.request_id, code=exc.code, error=str(exc))
            await self._record(LibraryRefused("push", [str(exc)]))
            return self._answer(exc.request_id, exc.code, str(exc), [str(exc)])
        except LibraryRefused as exc:
            log.warning("library_push_refused", id=request_id, reasons=list(exc.reasons))
            await self._record(exc)
            return self._answer(request_id, "refused", str(exc), list(exc.reasons))
        except JournalError as exc:
            await self._record(LibraryRefused("push", [f"journal: {exc}"]))
            return self._answer(request_id, "journal_unavailable", str(exc), [str(exc)])
        await self._record(None)
        return PushAnswer(request_id, self.current().identity)

    def _answer(
        self, request_id: str | None, code: str, message: str, reasons: list[str]
    ) -> PushAnswer:
        refusal = PushRefusal(code, message, tuple(reasons))
        return PushAnswer(request_id, self.current().identity, refusal)

    async def _apply(self, vetted: Vetted, *, via: Via, by: str | None) -> None:
        """Journal ``library_changed``, then swap (nothing to do for the running library)."""
        old = self.current().identity
        new = vetted.library.identity
        if old == new:
            log.info("library_unchanged", name=new.name, version=new.version, via=via.value)
            return
        event = LibraryChanged(old, new, via, by, vetted.signed_by)
        uses = self.uses()
        when = self.now()
        if uses:
            for pump_id, use in uses.items():
                mine = replace(event, drug=use.drug, profile=use.profile)
                await self.journal.record_event(pump_id, mine, ts=when)
        else:
            await self.journal.append(JournalKind.STATE, {"event": event.to_json()}, ts=when)
        self.install(vetted.library)
        log.info(
            "library_changed",
            old=old.version,
            new=new.version,
            sha256=new.sha256,
            via=via.value,
            by=by,
        )
