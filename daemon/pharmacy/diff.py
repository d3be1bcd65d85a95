"""``infusiond library diff OLD NEW [--json]``: what changed between two drug libraries.

Every changed field is listed per profile and drug, old -> new: limits (start, soft, hard,
maintenance...), concentrations, diluents, incompatibilities, rule severities and every other
drug or profile field; added and removed drugs, profiles and worked examples. Unchanged
entries produce nothing. Lists are compared as a whole (``concentrations``: the old list ->
the new list). Exit 0 when the libraries are identical, 1 when they differ, as ``diff`` does.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from daemon.base.library_file import load_library
from daemon.base.payload import JsonObject
from protocol.library import Example, Library

EXIT_SAME = 0
EXIT_DIFFERENT = 1


class ChangeKind(enum.StrEnum):
    """What happened to an entry or a field."""

    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference; ``old``/``new`` are JSON values of the library file (a field's value,
    a whole list, a worked example's object), compared and printed as JSON."""

    kind: ChangeKind
    profile: str | None
    drug: str | None
    field: str | None
    old: object
    new: object

    def to_json(self) -> JsonObject:
        return {
            "change": self.kind.value,
            "profile": self.profile,
            "drug": self.drug,
            "field": self.field,
            "old": self.old,
            "new": self.new,
        }

    def __str__(self) -> str:
        where = " / ".join(p for p in (self.profile, self.drug) if p) or "library"
        if self.kind is ChangeKind.CHANGED:
            return f"{where}: {self.field} {_show(self.old)} -> {_show(self.new)}"
        what = self.field or ("drug" if self.drug else "profile")
        value = self.new if self.kind is ChangeKind.ADDED else self.old
        shown = f" {_show(value)}" if self.field else ""
        return f"{where}: {what} {self.kind.value}{shown}"


def _show(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _flatten(data: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Dotted paths to leaves; lists are leaves (compared whole)."""
    out: dict[str, object] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _fields(
    old: Mapping[str, object], new: Mapping[str, object], profile: str | None, drug: str | None
) -> Iterator[Change]:
    a, b = _flatten(old), _flatten(new)
    for path in [*a, *(p for p in b if p not in a)]:
        before, after = a.get(path), b.get(path)
        if before != after:
            yield Change(ChangeKind.CHANGED, profile, drug, path, before, after)


def _dump(model: BaseModel, *, exclude: set[str] | None = None) -> JsonObject:
    """A library part as the JSON the file holds: what the diff compares."""
    return model.model_dump(mode="json", exclude=exclude)


def _example_key(example: Example) -> str:
    d = _dump(example, exclude={"expect_rate", "expect_dose", "tolerance", "note"})
    return json.dumps(d, sort_keys=True)


def diff_libraries(old: Library, new: Library) -> list[Change]:
    """Every difference between ``old`` and ``new``, in the new file's order."""
    changes = [
        Change(ChangeKind.CHANGED, None, None, name, getattr(old, name), getattr(new, name))
        for name in ("name", "version", "description")
        if getattr(old, name) != getattr(new, name)
    ]
    changes.extend(
        _prefixed(c, "pump_default.")
        for c in _fields(_dump(old.pump_default), _dump(new.pump_default), None, None)
    )
    old_profiles = {p.id: p for p in old.profiles}
    new_profiles = {p.id: p for p in new.profiles}
    changes.extend(
        Change(ChangeKind.REMOVED, pid, None, None, None, None)
        for pid in old_profiles
        if pid not in new_profiles
    )
    for pid, profile in new_profiles.items():
        before = old_profiles.get(pid)
        if before is None:
            changes.append(Change(ChangeKind.ADDED, pid, None, None, None, None))
            continue
        changes.extend(
            _fields(_dump(before, exclude={"drugs"}), _dump(profile, exclude={"drugs"}), pid, None)
        )
        old_drugs = {d.drug: d for d in before.drugs}
        new_drugs = {d.drug: d for d in profile.drugs}
        changes.extend(
            Change(ChangeKind.REMOVED, pid, name, None, None, None)
            for name in old_drugs
            if name not in new_drugs
        )
        for name, drug in new_drugs.items():
            prior = old_drugs.get(name)
            if prior is None:
                changes.append(Change(ChangeKind.ADDED, pid, name, None, None, None))
            else:
                changes.extend(_fields(_dump(prior), _dump(drug), pid, name))
    changes.extend(_examples(old, new))
    return changes


def _prefixed(change: Change, prefix: str) -> Change:
    return Change(
        change.kind, change.profile, change.drug, f"{prefix}{change.field}", change.old, change.new
    )


def _examples(old: Library, new: Library) -> Iterator[Change]:
    """Examples are matched by what they compute (profile, drug, dose, weight, concentration);
    a matched example whose expectation changed is ``changed``, others added or removed."""
    old_ex = {_example_key(e): e for e in old.examples}
    new_ex = {_example_key(e): e for e in new.examples}
    for key, example in old_ex.items():
        if key not in new_ex:
            yield Change(
                ChangeKind.REMOVED, example.profile, example.drug, "example", _dump(example), None
            )
    for key, example in new_ex.items():
        prior = old_ex.get(key)
        if prior is None:
            yield Change(
                ChangeKind.ADDED, example.profile, example.drug, "example", None, _dump(example)
            )
            continue
        for change in _fields(_dump(prior), _dump(example), example.profile, example.drug):
            yield _prefixed(change, "example.")


def run(args: argparse.Namespace) -> int:
    """Print the differences; exit 0 when identical, 1 when they differ."""
    old = load_library(Path(args.old))
    new = load_library(Path(args.new))
    changes = diff_libraries(old, new)
    if args.json:
        out = {
            "old": old.identity.to_dict(),
            "new": new.identity.to_dict(),
            "changes": [c.to_json() for c in changes],
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    else:
        head = (
            f"--- {old.name} {old.version} sha256={old.identity.sha256}\n"
            f"+++ {new.name} {new.version} sha256={new.identity.sha256}\n"
        )
        sys.stdout.write(head + "".join(f"{c}\n" for c in changes))
    return EXIT_DIFFERENT if changes else EXIT_SAME
