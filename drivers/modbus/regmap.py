"""Register-map profiles (TOML data) and the pure codec shared by driver and simulator.

A profile (``drivers/profiles/<name>.toml``) declares every register a pump exposes: table
(holding/input), 0-based address, type (u16, u32, ascii, bitfield), scale, access (ro/rw) and the
valid range in engineering units, plus the meaning of status values, alarm bits, commands and
result codes. The driver and the simulator both encode and decode through :class:`RegisterMap`,
so they cannot drift. A value outside its declared range raises :class:`FrameError` naming the
field, the register and the value: it is never returned as valid.

Pure: no I/O except :func:`load_profile` reading the file it is given.
"""

from __future__ import annotations

import enum
import itertools
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from drivers.errors import DriverError, FrameError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
MAX_REGISTERS_PER_READ = 125  # Modbus limit for FC3/FC4
MAX_ASCII_WORDS = 64
_T = TypeVar("_T")

#: A decoded value: int (u16/u32 without scale), Decimal (scaled), str (ascii), frozenset (bits)
Value = int | Decimal | str | frozenset[str]


class ProfileError(DriverError):
    """A register-map profile file is malformed; the message names the file and the key."""


class Table(enum.Enum):
    """Modbus data table of a register."""

    HOLDING = "holding"
    INPUT = "input"


class RegType(enum.Enum):
    """How a field's registers encode its value."""

    U16 = "u16"
    U32 = "u32"
    ASCII = "ascii"
    BITFIELD = "bitfield"


class WordOrder(enum.Enum):
    """Order of the two registers of a u32: ``big`` = high word first."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class Field:
    """One named value of the map, spanning ``words`` consecutive registers."""

    name: str
    table: Table
    address: int
    type: RegType
    words: int
    scale: Decimal = Decimal(1)
    writable: bool = False
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    bits: Mapping[int, str] = field(default_factory=dict)  # bitfield: bit -> name
    # valid raw integer range, derived from minimum/maximum and scale (checked before scaling)
    raw_min: int = field(init=False, default=0)
    raw_max: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        top = 0xFFFF if self.type is not RegType.U32 else 0xFFFFFFFF
        lo = 0 if self.minimum is None else max(0, int(_ceil(self.minimum / self.scale)))
        hi = top if self.maximum is None else min(top, int(_floor(self.maximum / self.scale)))
        object.__setattr__(self, "raw_min", lo)
        object.__setattr__(self, "raw_max", hi)

    @property
    def end(self) -> int:
        """One past the last register of the field."""
        return self.address + self.words

    @property
    def where(self) -> str:
        """Human name of the register(s) for error messages."""
        last = self.end - 1
        span = f"{self.address}" if last == self.address else f"{self.address}-{last}"
        return f"{self.name} ({self.table.value} register {span})"

    @property
    def scaled(self) -> bool:
        """True when the value is a Decimal in engineering units (scale != 1)."""
        return self.scale != 1

    # -- decoding --------------------------------------------------------------------------

    def decode(self, words: Sequence[int], order: WordOrder) -> Value:
        """Decode this field's registers; raises FrameError naming the register and value."""
        if len(words) != self.words:
            raise FrameError(f"{self.where}: expected {self.words} registers, got {len(words)}")
        for w in words:
            if not 0 <= w <= 0xFFFF:
                raise FrameError(f"{self.where}: register value {w} is not a 16-bit word")
        if self.type is RegType.ASCII:
            return self._decode_ascii(words)
        if self.type is RegType.BITFIELD:
            return self._decode_bits(words[0])
        raw = words[0] if self.type is RegType.U16 else _join_u32(words, order)
        if not self.raw_min <= raw <= self.raw_max:
            raise FrameError(
                f"{self.where}: value {Decimal(raw) * self.scale} (raw {raw}) outside the "
                f"valid range {self.minimum}..{self.maximum}"
            )
        return Decimal(raw) * self.scale if self.scale != 1 else raw

    def _decode_ascii(self, words: Sequence[int]) -> str:
        data = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\x00 ")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"{self.where}: not ASCII text: {data!r}") from None
        if not text.isprintable():
            raise FrameError(f"{self.where}: non-printable characters in {text!r}")
        return text

    def _decode_bits(self, word: int) -> frozenset[str]:
        unknown = [b for b in range(16) if word >> b & 1 and b not in self.bits]
        if unknown:
            raise FrameError(f"{self.where}: value {word:#06x} sets undefined bit(s) {unknown}")
        return frozenset(name for b, name in self.bits.items() if word >> b & 1)

    # -- encoding --------------------------------------------------------------------------

    def encode(self, value: Value, order: WordOrder) -> list[int]:
        """Encode a value into this field's registers; raises DriverError if out of range."""
        if self.type is RegType.ASCII:
            if not isinstance(value, str):
                raise DriverError(f"{self.where}: expected text, got {value!r}")
            return self._encode_ascii(value)
        if self.type is RegType.BITFIELD:
            if not isinstance(value, frozenset | set):
                raise DriverError(f"{self.where}: expected a set of flags, got {value!r}")
            return [self._encode_bits(value)]
        if isinstance(value, str | frozenset | set | bool):
            raise DriverError(f"{self.where}: expected a number, got {value!r}")
        number = Decimal(value)
        if not number.is_finite():
            raise DriverError(f"{self.where}: value {number} is not a finite number")
        limit = 0xFFFF if self.type is RegType.U16 else 0xFFFFFFFF
        if not 0 <= number <= limit * self.scale:  # before dividing: no decimal overflow
            raise DriverError(f"{self.where}: value {number} does not fit a {self.type.value}")
        raw_dec = number / self.scale
        if raw_dec != raw_dec.to_integral_value():
            raise DriverError(
                f"{self.where}: value {number} is not a multiple of the resolution {self.scale}"
            )
        raw = int(raw_dec)
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise DriverError(
                f"{self.where}: value {number} outside the valid range "
                f"{self.minimum}..{self.maximum}"
            )
        return [raw] if self.type is RegType.U16 else _split_u32(raw, order)

    def _encode_ascii(self, text: str) -> list[int]:
        data = text.encode("ascii", errors="strict") if text.isascii() else None
        if data is None or not text.isprintable():
            raise DriverError(f"{self.where}: {text!r} is not printable ASCII")
        if len(data) > 2 * self.words:
            raise DriverError(f"{self.where}: {text!r} longer than {2 * self.words} characters")
        data = data.ljust(2 * self.words, b"\x00")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    def _encode_bits(self, flags: Iterable[str]) -> int:
        by_name = {name: b for b, name in self.bits.items()}
        word = 0
        for flag in flags:
            if flag not in by_name:
                raise DriverError(f"{self.where}: unknown flag {flag!r}")
            word |= 1 << by_name[flag]
        return word


def _ceil(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=ROUND_CEILING)


def _floor(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=ROUND_FLOOR)


def _join_u32(words: Sequence[int], order: WordOrder) -> int:
    hi, lo = (words[0], words[1]) if order is WordOrder.BIG else (words[1], words[0])
    return hi << 16 | lo


def _split_u32(raw: int, order: WordOrder) -> list[int]:
    hi, lo = raw >> 16, raw & 0xFFFF
    return [hi, lo] if order is WordOrder.BIG else [lo, hi]


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: Table
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class Decoder:
    """A precomputed read plan: which span and offset holds each field (for fast polls)."""

    spans: tuple[Span, ...]
    slots: tuple[tuple[Field, int, int], ...]  # (field, span index, offset in span)
    order: WordOrder

    def decode(self, blocks: Sequence[Sequence[int]]) -> dict[str, Value]:
        """Decode the answers to ``spans`` (same order); FrameError on any bad length/value."""
        if len(blocks) != len(self.spans):
            raise FrameError(f"expected {len(self.spans)} register blocks, got {len(blocks)}")
        for span, words in zip(self.spans, blocks, strict=True):
            if len(words) != span.count:
                raise FrameError(
                    f"{span.table.value} registers {span.address}-{span.end - 1}: "
                    f"asked for {span.count} registers, the answer has {len(words)}"
                )
        return {
            f.name: f.decode(blocks[i][offset : offset + f.words], self.order)
            for f, i, offset in self.slots
        }


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A whole profile: fields plus the meaning of status values, alarm bits and commands."""

    name: str
    version: int
    word_order: WordOrder
    fields: Mapping[str, Field]
    status_values: Mapping[int, str]  # register value -> run state name
    commands: Mapping[str, int]  # command name -> register value
    results: Mapping[int, str]  # last_result value -> meaning
    max_read_gap: int = 0
    description: str = ""

    def __getitem__(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise DriverError(f"profile {self.name}: no field {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def plan_reads(self, names: Iterable[str]) -> tuple[Span, ...]:
        """The fewest read requests covering ``names``, bridging gaps up to ``max_read_gap``."""
        spans: list[Span] = []
        for table in Table:
            fields = sorted(
                (self[n] for n in names if self[n].table is table), key=lambda f: f.address
            )
            current: Span | None = None
            for f in fields:
                if current is not None:
                    gap_ok = f.address - current.end <= self.max_read_gap
                    fits = max(current.end, f.end) - current.address <= MAX_REGISTERS_PER_READ
                    if gap_ok and fits:
                        end = max(current.end, f.end)
                        current = Span(table, current.address, end - current.address)
                        continue
                    spans.append(current)
                current = Span(table, f.address, f.words)
            if current is not None:
                spans.append(current)
        return tuple(spans)

    def decoder(self, names: Iterable[str], spans: Sequence[Span] | None = None) -> Decoder:
        """A :class:`Decoder` for ``names`` over ``spans`` (default: :meth:`plan_reads`)."""
        wanted = tuple(names)
        plan = tuple(spans) if spans is not None else self.plan_reads(wanted)
        slots = []
        for name in wanted:
            f = self[name]
            index = next(
                (
                    i
                    for i, s in enumerate(plan)
                    if s.table is f.table and s.address <= f.address and f.end <= s.end
                ),
                None,
            )
            if index is None:
                raise DriverError(f"{f.where}: not covered by the registers read")
            slots.append((f, index, f.address - plan[index].address))
        return Decoder(plan, tuple(slots), self.word_order)

    def decode(
        self, names: Iterable[str], blocks: Mapping[Span, Sequence[int]]
    ) -> dict[str, Value]:
        """Decode ``names`` from blocks keyed by the span they answer (lengths checked)."""
        spans = tuple(blocks)
        return self.decoder(names, spans).decode([blocks[s] for s in spans])

    def encode(self, values: Mapping[str, Value]) -> dict[int, int]:
        """Encode named values into ``{address: word}`` (checks every value's range)."""
        out: dict[int, int] = {}
        for name, value in values.items():
            f = self[name]
            for i, w in enumerate(f.encode(value, self.word_order)):
                out[f.address + i] = w
        return out

    def status_name(self, raw: int) -> str:
        """Run-state name of a status register value (FrameError if undefined)."""
        try:
            return self.status_values[raw]
        except KeyError:
            raise FrameError(
                f"{self['status'].where}: value {raw} is not a defined status "
                f"{sorted(self.status_values)}"
            ) from None

    def status_value(self, name: str) -> int:
        """Register value of a run-state name."""
        for raw, state in self.status_values.items():
            if state == name:
                return raw
        raise DriverError(f"profile {self.name}: no status value for {name!r}")

    def command(self, name: str) -> int:
        """Register value of a command name (start, stop, pause, apply_rate, ...)."""
        try:
            return self.commands[name]
        except KeyError:
            raise DriverError(f"profile {self.name}: no command {name!r}") from None

    def result_name(self, raw: int) -> str:
        """Meaning of a last_result value (FrameError if undefined)."""
        try:
            return self.results[raw]
        except KeyError:
            raise FrameError(
                f"{self['last_result'].where}: value {raw} is not a defined result "
                f"{sorted(self.results)}"
            ) from None


# -- loading ---------------------------------------------------------------------------------

REQUIRED_FIELDS = (
    "status",
    "alarms",
    "rate",
    "heartbeat",
    "rate_setpoint",
    "command",
    "command_seq",
    "executed_seq",
    "last_result",
)
REQUIRED_COMMANDS = ("start", "stop", "pause", "apply_rate")
_WORDS = {RegType.U16: 1, RegType.U32: 2, RegType.BITFIELD: 1}


def load_profile(name_or_path: str | Path) -> RegisterMap:
    """Load a profile by name (``generic-pump-v1``, from drivers/profiles/) or by file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from None
    return parse_profile(data, source=str(path))


def parse_profile(data: Mapping[str, Any], source: str = "<profile>") -> RegisterMap:
    """Build a RegisterMap from parsed TOML, naming the offending key on any problem."""
    head = _table(data, "profile", source)
    name = _get(head, "name", str, f"{source}: [profile]")
    version = _get(head, "version", int, f"{source}: [profile]")
    try:
        order = WordOrder(head.get("word_order", "big"))
    except ValueError:
        raise ProfileError(
            f"{source}: [profile].word_order must be 'big' or 'little', "
            f"got {head.get('word_order')!r}"
        ) from None
    gap = _get(head, "max_read_gap", int, f"{source}: [profile]", default=0)
    fields = {
        fname: _parse_field(fname, spec, source)
        for fname, spec in _table(data, "registers", source).items()
    }
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise ProfileError(f"{source}: [registers] lacks required field(s) {missing}")
    _check_overlaps(fields.values(), source)
    status_values = _int_keys(_table(data, "status_values", source), "status_values", source)
    results = _int_keys(_table(data, "results", source), "results", source)
    commands_raw = _table(data, "commands", source)
    commands = {k: _get(commands_raw, k, int, f"{source}: [commands]") for k in commands_raw}
    missing = [c for c in REQUIRED_COMMANDS if c not in commands]
    if missing:
        raise ProfileError(f"{source}: [commands] lacks {missing}")
    if set(status_values.values()) - {"stopped", "infusing", "paused", "alarm"}:
        raise ProfileError(
            f"{source}: [status_values] may only name stopped, infusing, paused, alarm"
        )
    return RegisterMap(
        name=name,
        version=version,
        word_order=order,
        fields=fields,
        status_values=status_values,
        commands=commands,
        results=results,
        max_read_gap=gap,
        description=str(head.get("description", "")),
    )


def _parse_field(fname: str, spec: Any, source: str) -> Field:
    where = f"{source}: [registers.{fname}]"
    if not isinstance(spec, dict):
        raise ProfileError(f"{where} must be a table")
    try:
        table = Table(spec.get("table", "holding"))
        rtype = RegType(_get(spec, "type", str, where))
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None
    address = _get(spec, "address", int, where)
    if not 0 <= address <= 0xFFFF:
        raise ProfileError(f"{where}.address {address} outside 0..65535")
    if rtype is RegType.ASCII:
        words = _get(spec, "words", int, where)
        if not 1 <= words <= MAX_ASCII_WORDS:
            raise ProfileError(f"{where}.words {words} outside 1..{MAX_ASCII_WORDS}")
    else:
        words = _WORDS[rtype]
    access = spec.get("access", "ro")
    if access not in ("ro", "rw"):
        raise ProfileError(f"{where}.access must be 'ro' or 'rw', got {access!r}")
    scale = _decimal(spec.get("scale", "1"), f"{where}.scale")
    if scale <= 0:
        raise ProfileError(f"{where}.scale must be > 0")
    minimum = _decimal(spec["min"], f"{where}.min") if "min" in spec else None
    maximum = _decimal(spec["max"], f"{where}.max") if "max" in spec else None
    bits: dict[int, str] = {}
    if rtype is RegType.BITFIELD:
        bits = _int_keys(_get(spec, "bits", dict, where), f"registers.{fname}.bits", source)
        if any(not 0 <= b <= 15 for b in bits):
            raise ProfileError(f"{where}.bits: bit numbers must be 0..15")
    return Field(
        name=fname,
        table=table,
        address=address,
        type=rtype,
        words=words,
        scale=scale,
        writable=access == "rw",
        minimum=minimum,
        maximum=maximum,
        bits=bits,
    )


def _check_overlaps(fields: Iterable[Field], source: str) -> None:
    for table in Table:
        ordered = sorted((f for f in fields if f.table is table), key=lambda f: f.address)
        for a, b in itertools.pairwise(ordered):
            if b.address < a.end:
                raise ProfileError(f"{source}: {a.where} overlaps {b.where}")
            if b.end > 0x10000:
                raise ProfileError(f"{source}: {b.where} runs past register 65535")


def _table(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProfileError(f"{source}: missing table [{key}]")
    return value


def _get(
    data: Mapping[str, Any], key: str, kind: type[_T], where: str, default: _T | None = None
) -> _T:
    if key not in data:
        if default is not None:
            return default
        raise ProfileError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProfileError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProfileError(f"{where} must be a number, got {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ProfileError(f"{where} must be a number, got {value!r}") from None


def _int_keys(table: Mapping[str, Any], key: str, source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for k, v in table.items():
        if not k.isdigit() or not isinstance(v, str):
            raise ProfileError(f'{source}: [{key}] entries must be "<int>" = "<name>"')
        out[int(k)] = v
    return out
