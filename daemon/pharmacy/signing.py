"""Ed25519 signatures of drug-library files.

A signature covers the library file's exact bytes. Keys are PEM files: the private key in
PKCS#8, the public key as SubjectPublicKeyInfo (what ``openssl genpkey -algorithm ed25519`` and
``openssl pkey -pubout`` write). The signature is a file holding the base64 of the 64 signature
bytes (one line). A key is named in messages and in the journal by its fingerprint: the first
16 hex digits of the sha256 of its raw 32 public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import LibraryError

SIGNATURE_BYTES = 64
#: a base64 signature is 88 characters; anything much longer is not one
MAX_SIGNATURE_TEXT = 256
MAX_KEY_FILE_BYTES = 16 * 1024


class SignatureError(LibraryError):
    """A library signature or key is missing, malformed or does not verify."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the daemon accepts library signatures from."""

    fingerprint: str
    key: Ed25519PublicKey
    source: str


def fingerprint(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SignatureError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PKCS#8 PEM file (unencrypted)."""
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"private key {path} is not a PKCS#8 PEM key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"private key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> TrustedKey:
    """An Ed25519 public key from a SubjectPublicKeyInfo PEM file."""
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"public key {path} is not a SubjectPublicKeyInfo PEM key: {exc}"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"public key {path} is not an Ed25519 key")
    return TrustedKey(fingerprint(key), key, str(path))


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of ``key`` (unencrypted; protect the file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of ``key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_library(key: Ed25519PrivateKey, data: bytes) -> str:
    """The base64 signature of the library bytes ``data``."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def decode_signature(text: str) -> bytes:
    """The 64 signature bytes of a base64 signature (surrounding whitespace ignored)."""
    stripped = text.strip()
    if len(stripped) > MAX_SIGNATURE_TEXT:
        raise SignatureError(
            f"signature: {len(stripped)} characters, longer than {MAX_SIGNATURE_TEXT}"
        )
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature: not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError(
            f"signature: {len(raw)} bytes, an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    return raw


def verify_library(keys: Sequence[TrustedKey], data: bytes, signature: str) -> TrustedKey:
    """The trusted key that signed ``data``; SignatureError when none did."""
    raw = decode_signature(signature)
    if not keys:
        raise SignatureError("signature: no trusted keys are configured (library.trusted_keys)")
    for trusted in keys:
        try:
            trusted.key.verify(raw, data)
        except InvalidSignature:
            continue
        return trusted
    names = ", ".join(k.fingerprint for k in keys)
    raise SignatureError(
        f"signature: does not verify with any trusted key ({names}); "
        "the library was changed after signing or signed with another key"
    )


def read_signature_file(path: Path) -> str:
    """The text of a signature file (capped)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SIGNATURE_TEXT + 1)
    except FileNotFoundError:
        raise SignatureError(f"signature file {path} not found") from None
    except OSError as exc:
        raise SignatureError(f"signature file {path} cannot be read: {exc.strerror}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SignatureError(f"signature file {path}: not base64 text") from None
