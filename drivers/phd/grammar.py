"""The PHD ULTRA pump-chain grammar (data in ``grammar.toml``), shared by driver and simulator.

Pure: no I/O, no clock. :class:`Command` is what goes out (``[addr:]name [args]`` CR), and
:class:`Reply` what comes back: zero or more data lines, then the prompt of the answering pump,
which carries its state. :class:`ReplyReader` turns received bytes into replies; it is lenient
in what it accepts (CR, LF or CR LF; an ``addr:`` prefix on data lines or none) and never
trusts the peer: lines and the buffer are capped, garbage is reported and skipped.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from drivers.errors import FrameError
from drivers.serial.lines import LineStream
from drivers.serial.table import CommandSpec, load_commands, read_toml

_RAW: dict[str, Any] = read_toml("drivers.phd", "grammar.toml")

COMMANDS: dict[str, CommandSpec] = load_commands(_RAW)
SOURCES: dict[str, str] = _RAW["sources"]
RATE_UNITS: dict[str, Decimal] = {k: Decimal(v) for k, v in _RAW["rate_units"].items()}
VOLUME_UNITS: dict[str, Decimal] = {k: Decimal(v) for k, v in _RAW["volume_units"].items()}
#: error reply line -> meaning
ERRORS: dict[str, str] = {row["text"]: row["meaning"] for row in _RAW["errors"]}
#: most data lines in one reply (ours have at most one)
MAX_LINES = 4
MAX_LINE = 96


class Prompt(enum.Enum):
    """The state a prompt carries."""

    IDLE = "idle"
    INFUSING = "infusing"
    WITHDRAWING = "withdrawing"
    STALLED = "stalled"
    TARGET_REACHED = "target_reached"

    @property
    def text(self) -> str:
        return _PROMPT_TEXT[self]


_PROMPT_TEXT: dict[Prompt, str] = {Prompt(row["state"]): row["text"] for row in _RAW["prompts"]}
_PROMPT_RE = re.compile(
    r"(?:(\d{1,2}))?("
    + "|".join(re.escape(t) for t in sorted(_PROMPT_TEXT.values(), key=len, reverse=True))
    + ")"
)
_PROMPTS = {text: state for state, text in _PROMPT_TEXT.items()}
_COMMAND_RE = re.compile(r"(?:(\d{1,2}):)?([a-z]+)(?: (.*))?")


def resolve(word: str) -> str | None:
    """The command a word names: its full name or its first four letters (case-insensitive)."""
    word = word.lower()
    for name in COMMANDS:
        if word == name or (len(name) > 4 and word == name[:4]):
            return name
    return None


@dataclass(frozen=True, slots=True)
class Command:
    """One command for the pump at ``address`` (0 is sent without a prefix)."""

    name: str
    args: str = ""
    address: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 99:
            raise ValueError(f"PHD ULTRA address must be 0..99, got {self.address}")
        if not _printable(self.args) or "\r" in self.args or "\n" in self.args:
            raise ValueError(f"command arguments must be printable ASCII: {self.args!r}")

    def text(self) -> str:
        prefix = f"{self.address}:" if self.address else ""
        return f"{prefix}{self.name}{' ' + self.args if self.args else ''}"

    def encode(self) -> bytes:
        return self.text().encode("ascii") + b"\r"

    @classmethod
    def parse(cls, text: str) -> Command:
        """A received command line (simulator side); FrameError naming what is wrong."""
        m = _COMMAND_RE.fullmatch(text.strip().lower())
        if m is None:
            raise FrameError(f"not '[addr:]command [arguments]': {text!r}")
        addr, word, args = m.groups()
        name = resolve(word)
        if name is None:
            raise FrameError(f"unknown command {word!r}")
        return cls(name, (args or "").strip(), int(addr) if addr else 0)


@dataclass(frozen=True, slots=True)
class Reply:
    """Data lines and the prompt of the pump at ``address``."""

    address: int
    prompt: Prompt
    lines: tuple[str, ...] = ()

    @property
    def error(self) -> str | None:
        """The error line (``?``, ``OOR``, ``Out of range`` ...) when the reply is one."""
        return next((line for line in self.lines if line in ERRORS), None)

    @property
    def data(self) -> str:
        return "\n".join(self.lines)

    def encode(self) -> bytes:
        """Wire form: each line as LF line CR, then LF, the address (if non-zero), the prompt."""
        body = b"".join(b"\n" + line.encode("ascii") + b"\r" for line in self.lines)
        prefix = str(self.address) if self.address else ""
        return body + b"\n" + (prefix + self.prompt.text).encode("ascii")


class ReplyReader:
    """Replies out of a byte stream (driver side)."""

    def __init__(self) -> None:
        self.stream = LineStream(cap=512, max_line=MAX_LINE)
        self._lines: list[str] = []

    def clear(self) -> None:
        self.stream.clear()
        self._lines.clear()

    def pop(self, address: int) -> Reply | None:
        """The next whole reply, None until its prompt has arrived.

        Raises FrameError for each bad line (the lines collected so far are dropped with it, so
        a reply missing a line is never assembled) and for a prompt naming another address; a
        prompt naming none is the addressed pump's (only it answers a command).
        """
        while True:
            try:
                line = self.stream.pop_line()
            except FrameError:
                self._lines.clear()
                raise
            if line is None:
                break
            if _PROMPT_RE.fullmatch(line):
                self._lines.clear()  # the end of an earlier reply (a late or noisy one)
                continue
            line = _strip_address(line, address)
            if len(self._lines) >= MAX_LINES:
                self._lines.clear()
                raise FrameError(f"more than {MAX_LINES} lines before a prompt")
            self._lines.append(line)
        tail = self.stream.tail()
        if tail is None:
            raw = self.stream.pending()
            self.clear()
            raise FrameError(f"garbled prompt {raw[:16]!r}")
        m = _PROMPT_RE.fullmatch(tail)
        if m is None:
            return None
        self.stream.clear()
        lines, self._lines = tuple(self._lines), []
        if m.group(1) is not None and int(m.group(1)) != address:
            raise FrameError(f"prompt of pump {int(m.group(1)):02d}, expected {address:02d}")
        return Reply(address, _PROMPTS[m.group(2)], lines)


def check_reply(command: Command, reply: Reply) -> None:
    """FrameError unless the reply's data fits what ``command`` expects (or is an error)."""
    if reply.error is not None:
        return
    spec = COMMANDS.get(command.name)
    shape = None if spec is None else spec.reply_shape(command.args)
    if shape is None or shape.fullmatch(reply.data) is None:
        raise FrameError(
            f"reply {reply.data!r} from pump {reply.address:02d} does not fit "
            f"{command.text()!r} (expected {shape.pattern if shape else 'no reply'!r})"
        )


def parse_quantity(text: str, units: dict[str, Decimal]) -> Decimal:
    """``'46.87 ml/hr'`` -> 46.87 (in the table's base unit); ValueError naming the problem."""
    number, _, unit = text.partition(" ")
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r} in {text!r}")
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a number: {number!r} in {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a non-negative number: {text!r}")
    return value * units[unit]


@dataclass(frozen=True, slots=True)
class RawStatus:
    """The ``status`` line (source U88): values are for the current direction."""

    rate_fl_s: int
    time_s: int
    volume_fl: int
    infusing_direction: bool  # flag 1: 'i' (else 'w')
    limit: str  # flag 2: 'I', 'W' or '.'
    stalled: bool  # flag 3: 'S'
    trigger_high: bool  # flag 4: 'T'
    port_infuse: bool  # flag 5: 'I' (else 'W')

    @property
    def rate_ml_h(self) -> Decimal:
        return Decimal(self.rate_fl_s) * 3600 / Decimal(10) ** 12

    @property
    def volume_ml(self) -> Decimal:
        return Decimal(self.volume_fl) / Decimal(10) ** 12

    def text(self) -> str:
        flags = (
            ("i" if self.infusing_direction else "w")
            + self.limit
            + ("S" if self.stalled else ".")
            + ("T" if self.trigger_high else ".")
            + ("I" if self.port_infuse else "W")
        )
        return f"{self.rate_fl_s} {self.time_s} {self.volume_fl} {flags}"

    @classmethod
    def parse(cls, line: str) -> RawStatus:
        spec = COMMANDS["status"]
        if spec.query is None or spec.query.fullmatch(line) is None:
            raise FrameError(f"status line {line!r} is not 'fL/s s fL flags'")
        rate, time_s, volume, flags = line.split(" ")
        return cls(
            rate_fl_s=int(rate),
            time_s=int(time_s),
            volume_fl=int(volume),
            infusing_direction=flags[0] == "i",
            limit=flags[1],
            stalled=flags[2] == "S",
            trigger_high=flags[3] == "T",
            port_infuse=flags[4] == "I",
        )


def _strip_address(line: str, address: int) -> str:
    """Drop an ``addr:`` prefix naming ``address`` (lenient; other prefixes stay and fail)."""
    head, sep, rest = line.partition(":")
    if sep and head.isdigit() and len(head) <= 2 and int(head) == address:
        return rest.lstrip(" ")
    return line


def _printable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)
