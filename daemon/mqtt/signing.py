"""Signed commands: HMAC-SHA256 over the canonical command, with a key id.

A command may carry ``"sig": {"kid": "<key id>", "hmac": "<64 lowercase hex digits>"}``. The
MAC is computed over the **canonical command**: the parsed JSON object without its ``sig``
key, serialised with keys sorted at every level, compact separators (``,`` and ``:``), no
ASCII escaping (UTF-8 bytes), numbers as Python's ``json`` module writes them (integers as
integers, floats in their shortest round-trip form), i.e.::

    json.dumps({k: v for k, v in cmd.items() if k != "sig"}, sort_keys=True,
               separators=(",", ":"), ensure_ascii=False).encode("utf-8")

The key is the UTF-8 bytes of the configured secret. Keys come from the configuration as
references, never as values: ``control.keys = {kid = "env:NAME"}`` reads the environment
variable ``NAME``; any other string is the path of a file whose content (stripped of
surrounding whitespace) is the key. Resolved keys live in :class:`pydantic.SecretStr`, so they
never appear in a repr, a log line or an error message.

With ``control.require_signature = true`` an unsigned command is refused; a command that
carries a ``sig`` is always verified (with no keys configured, its key id is unknown). Every
failure answers ``rejected`` with ``error.code = "bad_signature"`` and a message that names the
problem (unknown key id, MAC mismatch, missing signature) but never a key. A signature does
not replace the other checks: the id is still deduplicated (a replayed signed command is a
``duplicate``), and ``issued_at``/``ttl_s`` still bound its lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from daemon.base.errors import ConfigError
from daemon.base.payload import JsonObject

SIG_FIELD = "sig"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096


def canonical_bytes(command: Mapping[str, object]) -> bytes:
    """The bytes the MAC covers: ``command`` without ``sig``, sorted keys, compact, UTF-8."""
    body = {k: v for k, v in command.items() if k != SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hmac(command: Mapping[str, object], key: bytes) -> str:
    """Hex HMAC-SHA256 of the canonical command."""
    return hmac.new(key, canonical_bytes(command), hashlib.sha256).hexdigest()


def sign(command: Mapping[str, object], *, kid: str, key: bytes) -> JsonObject:
    """A copy of ``command`` with its ``sig`` (for clients and tests)."""
    return {**command, SIG_FIELD: {"kid": kid, "hmac": compute_hmac(command, key)}}


def _resolve(kid: str, ref: str, environ: Mapping[str, str]) -> SecretStr:
    where = f"control.keys.{kid}"
    if ref.startswith("env:"):
        name = ref.removeprefix("env:")
        value = environ.get(name)
        if value is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
    else:
        try:
            value = Path(ref).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{where}: key file {ref} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: key file {ref} cannot be read: {exc}") from None
    size = len(value.encode())
    if not MIN_KEY_BYTES <= size <= MAX_KEY_BYTES:
        raise ConfigError(
            f"{where}: key must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {size} bytes"
        )
    return SecretStr(value)


@dataclass(frozen=True)
class SignaturePolicy:
    """The configured keys (by id) and whether every command must be signed."""

    keys: Mapping[str, SecretStr] = field(default_factory=dict)
    require: bool = False

    @classmethod
    def from_config(
        cls,
        refs: Mapping[str, str],
        *,
        require: bool,
        environ: Mapping[str, str] | None = None,
    ) -> SignaturePolicy:
        """Resolve ``control.keys`` references; ConfigError names the key id, never a key."""
        env = os.environ if environ is None else environ
        if require and not refs:
            raise ConfigError("control.keys: required when control.require_signature is true")
        return cls({kid: _resolve(kid, ref, env) for kid, ref in refs.items()}, require)

    @property
    def active(self) -> bool:
        """True when commands are checked at all."""
        return self.require or bool(self.keys)

    def check(self, command: Mapping[str, object]) -> str | None:
        """None when ``command`` passes; else the reason (for ``bad_signature``)."""
        sig = command.get(SIG_FIELD)
        if sig is None:
            return (
                "sig: required (this gateway only accepts signed commands)"
                if self.require
                else None
            )
        if not isinstance(sig, Mapping):
            return "sig: must be an object {kid, hmac}"
        kid, mac = sig.get("kid"), sig.get("hmac")
        if not isinstance(kid, str) or not isinstance(mac, str):
            return "sig: kid and hmac must be strings"
        key = self.keys.get(kid)
        if key is None:
            return f"sig.kid: unknown key id {kid[:64]!r}"
        expected = compute_hmac(command, key.get_secret_value().encode())
        if not hmac.compare_digest(expected, mac.lower()):
            return "sig.hmac: does not match the command (altered, or signed with another key)"
        return None
