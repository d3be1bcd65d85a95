"""The substance vocabulary: one canonical id per substance, its synonyms and its classes.

Names in a check request's ``line_shares``, ``other_infusions[].drug`` and ``infusion.diluent``,
and in a library's drug names, diluent lists and ``incompatible`` lists, are matched through
this vocabulary (shipped as data in ``protocol/substances.toml``). :func:`normalise` is the
matching key: case, spaces, hyphens and underscores are ignored, so ``Sodium Bicarbonate``,
``sodium-bicarbonate`` and ``NaHCO3`` (a synonym) all resolve to ``sodium-bicarbonate``, which
belongs to the class ``alkaline``.

Everything is indexed when the file is loaded; a request only normalises its strings and looks
them up in dicts and frozensets (:meth:`Vocabulary.matching_keys` precomputes, per library
list, every name that meets it).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.errors import LibraryError

DEFAULT_SUBSTANCES_PATH: Final = Path(__file__).resolve().parent / "substances.toml"
MAX_VOCABULARY_BYTES: Final = 1024 * 1024

# Spaces (any whitespace), hyphens (ASCII and the Unicode dashes) and underscores are ignored.
_IGNORED: Final = dict.fromkeys(
    map(ord, " \t\r\n\v\f\u00a0\u2009\u202f-_\u2010\u2011\u2012\u2013\u2014\u2212"), None
)

Name = Annotated[str, Field(min_length=1, max_length=200)]


@lru_cache(maxsize=4096)  # requests repeat the same few names; bounded against hostile input
def normalise(name: str) -> str:
    """The matching key of a substance name: casefolded, without spaces, hyphens, underscores."""
    return name.translate(_IGNORED).casefold()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ClassEntry(_Model):
    names: tuple[Name, ...] = ()
    description: str = ""


class _SubstanceEntry(_Model):
    id: Name
    names: tuple[Name, ...] = ()
    classes: tuple[Name, ...] = ()


class _VocabularyFile(_Model):
    version: Name
    classes: dict[str, _ClassEntry] = Field(default_factory=dict)
    substances: tuple[_SubstanceEntry, ...] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Term:
    """What a name resolves to: a substance (``is_class`` false) or a class, by canonical id.

    ``classes`` are a substance's classes; ``members`` a class's substances (ids).
    """

    id: str
    is_class: bool
    classes: frozenset[str]
    members: frozenset[str]


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """A loaded vocabulary; build it with :func:`load_vocabulary` or :func:`shipped_vocabulary`."""

    version: str
    sha256: str
    source: str
    terms: dict[str, Term] = field(repr=False, compare=False)  # canonical id -> term
    _index: dict[str, Term] = field(repr=False, compare=False)  # normalised name -> term

    def lookup(self, name: str) -> Term | None:
        """The substance or class ``name`` stands for, or ``None`` if the vocabulary lacks it."""
        return self._index.get(normalise(name))

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a known substance or class."""
        return normalise(name) in self._index

    def knows_key(self, key: str) -> bool:
        """Whether an already normalised name is a known substance or class."""
        return key in self._index

    def ident(self, name: str) -> str:
        """The canonical id of ``name``; an unknown name is its own normalised key (so it still
        matches itself, spelt any way, but never a known substance)."""
        key = normalise(name)
        term = self._index.get(key)
        return key if term is None else term.id

    def matching_keys(self, names: Iterable[str], *, classes_meet: bool) -> frozenset[str]:
        """Every normalised name that meets one of ``names`` (a library list).

        A listed substance is met by its own names; a listed class by its names and by every
        member's names. With ``classes_meet`` (incompatibility, forbidden diluents) a class
        is also met by the name of any class that has a listed member: "alkaline solution" on
        the line meets a library that lists only sodium bicarbonate. Unknown listed names meet
        themselves only (normalised); ``infusiond library check`` reports them.
        """
        substances: set[str] = set()
        classes: set[str] = set()
        unknown: set[str] = set()
        for name in names:
            term = self.lookup(name)
            if term is None:
                unknown.add(normalise(name))
            elif term.is_class:
                classes.add(term.id)
                substances.update(term.members)
            else:
                substances.add(term.id)
                if classes_meet:
                    classes.update(term.classes)
        out = set(unknown)
        for key, term in self._index.items():
            if term.is_class:
                if term.id in classes:
                    out.add(key)
            elif term.id in substances:
                out.add(key)
        return frozenset(out)


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Read and index a vocabulary file; LibraryError names the file and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_VOCABULARY_BYTES + 1)
    except OSError as exc:
        raise LibraryError(f"{p}: cannot read substance vocabulary: {exc.strerror or exc}") from exc
    return load_vocabulary_bytes(data, str(p))


@cache
def shipped_vocabulary() -> Vocabulary:
    """The shipped example vocabulary (``protocol/substances.toml``), loaded once."""
    return load_vocabulary(DEFAULT_SUBSTANCES_PATH)


def load_vocabulary_bytes(data: bytes, source: str) -> Vocabulary:
    """Validate and index a vocabulary from its file bytes; ``source`` names it in errors."""
    if len(data) > MAX_VOCABULARY_BYTES:
        raise LibraryError(f"{source}: substance vocabulary is larger than {MAX_VOCABULARY_BYTES}")
    try:
        raw = tomllib.loads(data.decode("utf-8"), parse_float=Decimal)
        parsed = _VocabularyFile.model_validate(raw)
    except UnicodeDecodeError as exc:
        raise LibraryError(f"{source}: not UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LibraryError(f"{source}: invalid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(s) for s in first["loc"]) or "top level"
        raise LibraryError(f"{source}: {where}: {first['msg']}") from None
    members: dict[str, set[str]] = {c: set() for c in parsed.classes}
    for entry in parsed.substances:
        for cls in entry.classes:
            if cls not in members:
                raise LibraryError(
                    f"{source}: substance {entry.id!r}: class {cls!r} is not defined "
                    f"(defined: {', '.join(sorted(members))})"
                )
            members[cls].add(entry.id)
    terms: dict[str, Term] = {}
    named: list[tuple[Term, tuple[str, ...]]] = []
    for cls, centry in parsed.classes.items():
        term = Term(cls, is_class=True, classes=frozenset(), members=frozenset(members[cls]))
        terms[cls] = term
        named.append((term, (cls, *centry.names)))
    for entry in parsed.substances:
        term = Term(entry.id, is_class=False, classes=frozenset(entry.classes), members=frozenset())
        if entry.id in terms:
            raise LibraryError(f"{source}: id {entry.id!r} is defined twice")
        terms[entry.id] = term
        named.append((term, (entry.id, *entry.names)))
    index: dict[str, Term] = {}
    for term, names in named:
        for name in names:
            key = normalise(name)
            if not key:
                raise LibraryError(f"{source}: {term.id!r}: a name is empty once normalised")
            other = index.setdefault(key, term)
            if other is not term:
                raise LibraryError(
                    f"{source}: the name {name!r} is given to both {other.id!r} and {term.id!r}"
                )
    return Vocabulary(
        version=parsed.version,
        sha256=hashlib.sha256(data).hexdigest(),
        source=source,
        terms=terms,
        _index=index,
    )
