"""What ``infusiond fleet collect`` runs with: its ``--config`` file (TOML) with the command
line's flags laid over it, checked by one model.

The ``[broker]`` table is the gateway daemon's own
:class:`~daemon.base.config_sections.BrokerConfig` (same keys, same checks: the URL's scheme,
``[broker.tls]`` only with ``mqtts://``, a password needs a user, cert_file and key_file
together), plus ``password_file``: the password itself is never in the file nor on the command
line (``ps`` shows it), it comes from that file (a systemd credential) or from the environment.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FilePath, model_validator

from daemon.base.config_sections import BrokerConfig, TlsConfig
from daemon.fleet.errors import FleetError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1 to 64 letters, digits, '_', '.', '-' (no '/', '+', '#')"


def check_name(value: str) -> str:
    """A group or client id: it goes into topic filters (``$share/<group>/...``) and into the
    default client id, so no topic separators or wildcards."""
    if not _NAME.match(value):
        raise ValueError(NAME_RULE)
    return value


def _log_level(value: str) -> str:
    if value.upper() not in logging.getLevelNamesMapping():
        raise ValueError("one of debug, info, warning, error")
    return value


TopicName = Annotated[str, AfterValidator(check_name)]


class CollectorBroker(BrokerConfig):
    """``[broker]``: the daemon's table, with a password file and the collector's own needs
    (MQTT 5, a client id usable as a topic-safe name)."""

    password_file: FilePath | None = None
    client_id: TopicName | None = None

    @model_validator(mode="after")
    def _collector_needs(self) -> Self:
        if self.protocol != "5":
            raise ValueError(
                "protocol: the collector needs MQTT 5 (shared subscriptions, session expiry)"
            )
        if self.password_file is not None and self.password is not None:
            raise ValueError(
                "password_file: the password comes from one place, this file or the environment"
            )
        if self.password_file is not None and self.username is None:
            raise ValueError("username: required when a password is set")
        return self


class CollectorSettings(BaseModel):
    """The whole ``--config`` file (every key optional: the flags may give them instead)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    postgres: Annotated[str, Field(min_length=1)] | None = None
    group: TopicName | None = None
    batch: Annotated[int, Field(ge=1, le=10_000)] = 500
    log_level: Annotated[str, AfterValidator(_log_level)] = "info"
    broker: CollectorBroker = Field(default_factory=CollectorBroker)


def tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` broker (None for ``mqtt://``), built once at start so
    that a missing, unreadable or wrong file stops the collector before it connects anywhere;
    the :class:`FleetError` names the key and the file. Without ``ca_file`` the system's CAs
    verify the broker."""
    if not broker.uses_tls:
        return None
    files = broker.tls or TlsConfig()
    try:
        context = ssl.create_default_context(
            cafile=str(files.ca_file) if files.ca_file is not None else None
        )
    except OSError as exc:  # ssl.SSLError is an OSError
        msg = f"broker.tls.ca_file {files.ca_file}: not a PEM CA bundle ({_reason(exc)})"
        raise FleetError(msg) from None
    if files.cert_file is None or files.key_file is None:
        return context
    for key, path in (("cert_file", files.cert_file), ("key_file", files.key_file)):
        try:
            path.read_bytes()
        except OSError as exc:
            msg = f"broker.tls.{key} {path}: cannot be read ({_reason(exc)})"
            raise FleetError(msg) from None
    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=_no_passphrase)
    except (OSError, _EncryptedKey) as exc:
        msg = (
            f"broker.tls.cert_file {files.cert_file} and key_file {files.key_file}: not a PEM "
            f"certificate and its unencrypted private key ({_reason(exc)})"
        )
        raise FleetError(msg) from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    """Asked for an encrypted key's passphrase: refuse (OpenSSL would otherwise prompt on the
    terminal, and a service has none)."""
    raise _EncryptedKey("the key is encrypted")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
