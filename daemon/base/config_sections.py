"""The tables of the daemon's configuration file, one model each (``[broker]``, ``[control]``,
``[[pumps]]``, ``[[vitals]]``, ``[journal]``, ``[http]``, ``[library]``, ``[hl7_out]``, ``[piv]``,
``[beds.<id>]``): types, defaults, limits and the checks that span several keys of one table.
:mod:`daemon.base.config` assembles them into :class:`~daemon.base.config.Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from daemon.base.paths import DEFAULT_RETENTION_DAYS
from daemon.base.topics import TOPIC_ID_PATTERN

TopicId = Annotated[str, StringConstraints(pattern=TOPIC_ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(url: str, schemes: dict[str, int | None]) -> tuple[str, str, int]:
    """Split ``scheme://host:port`` (no path, no query) or raise ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError("host missing")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must be scheme://host[:port] with no path or query")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number in 1..65535") from None
    port = port if port is not None else schemes[parts.scheme]
    if port is None:
        raise ValueError("port missing")
    return parts.scheme, parts.hostname, port


class TlsConfig(_Section):
    """Client TLS for ``mqtts://``: CA bundle, optional client certificate and key."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file: cert_file and key_file go together")
        return self


class BrokerConfig(_Section):
    """MQTT broker connection (MQTT v5; 3.1.1 only for brokers without v5)."""

    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description=(
            "MQTT protocol version. Keep 5 in production: with 3.1.1 a standard broker clears "
            "the retain flag of live messages, so a retained command published while the daemon "
            "is subscribed cannot be recognised (only a stored one re-sent later is), and "
            "response_topic/correlation_data are not available."
        ),
    )
    username: Name | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _host_port(value, {"mqtt": 1883, "mqtts": 8883})
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("username: required when a password is set")
        if self.tls is not None and not self.uses_tls:
            raise ValueError("tls: only valid with an mqtts:// url")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return _host_port(self.url, {"mqtt": 1883, "mqtts": 8883})[1]

    @property
    def port(self) -> int:
        return _host_port(self.url, {"mqtt": 1883, "mqtts": 8883})[2]


class ControlConfig(_Section):
    """Remote control: off unless enabled, and then only for the allowlisted sources."""

    enabled: bool = False
    allowlist: list[Name] = Field(default_factory=list)
    keys: dict[Name, Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = Field(
        default_factory=dict,
        description=(
            'HMAC keys for signed commands, by key id: "env:NAME" (environment variable) or the '
            "path of a file holding the key (see daemon.mqtt.signing). Never the key itself."
        ),
    )
    require_signature: bool = Field(
        default=False,
        description=(
            'Refuse every command that carries no valid "sig" (HMAC-SHA256 by one of `keys`); '
            "a command that carries one is verified either way."
        ),
    )

    @model_validator(mode="after")
    def _allowlist_when_enabled(self) -> Self:
        if self.enabled and not self.allowlist:
            raise ValueError("allowlist: must not be empty when control is enabled")
        if self.require_signature and not self.keys:
            raise ValueError("keys: required when require_signature is true")
        return self


class VitalsSource(_Section):
    """One HL7 v2 (MLLP) source: ``listen`` for monitors that connect to us, or ``connect``."""

    listen: str | None = None
    connect: str | None = None
    bed: TopicId
    stale_after_s: PositiveSeconds = 900.0
    publish_every_s: PositiveSeconds = 5.0

    @field_validator("listen", "connect")
    @classmethod
    def _mllp_url(cls, value: str | None) -> str | None:
        if value is not None:
            _host_port(value, {"mllp": None, "tcp": None})
        return value

    @model_validator(mode="after")
    def _one_endpoint(self) -> Self:
        if (self.listen is None) == (self.connect is None):
            raise ValueError("listen: give exactly one of listen or connect")
        return self


class Concentration(_Section):
    value: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
    unit: Annotated[str, StringConstraints(min_length=1, max_length=32)]


class PumpConfig(_Section):
    """One pump channel: how to reach it and what it infuses."""

    id: TopicId
    driver: Literal["modbus", "newera", "phd"]
    url: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    unit_id: Annotated[int, Field(ge=1, le=247)] | None = None
    address: Annotated[int, Field(ge=0, le=99)] | None = None
    baudrate: Annotated[int, Field(ge=300, le=921_600)] | None = None
    map: Name | None = None
    poll_period_s: PositiveSeconds = 1.0
    publish_every_s: PositiveSeconds = 10.0
    bed: TopicId | None = None
    drug: Name
    concentration: Concentration
    diluent: Name
    route: Literal["central", "peripheral"]
    line_shares: list[Name] = Field(default_factory=list)
    library_profile: Name
    weight_kg: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None
    baseline_sbp: Annotated[float, Field(ge=40, le=300, allow_inf_nan=False)] | None = None
    chronic_hypertension: bool = False
    watchdog_s: Annotated[int, Field(ge=1, le=65_535)] | None = None
    syringe_diameter_mm: Annotated[float, Field(ge=0.1, le=45.0, allow_inf_nan=False)] | None = None

    @field_validator("url")
    @classmethod
    def _transport(cls, value: str) -> str:
        if value.startswith("/"):
            return value  # a serial device path
        _host_port(value, {"tcp": None, "socket": None})
        return value

    @model_validator(mode="after")
    def _per_driver(self) -> Self:
        if self.driver == "modbus":
            if self.address is not None:
                raise ValueError("address: only for newera and phd pumps (modbus uses unit_id)")
            if self.url.startswith("socket://"):
                raise ValueError("url: modbus pumps use tcp://host:port or a serial path")
        else:
            if self.unit_id is not None or self.map is not None:
                name = "unit_id" if self.unit_id is not None else "map"
                raise ValueError(f"{name}: only for modbus pumps")
            if self.url.startswith("tcp://"):
                raise ValueError(
                    f"url: {self.driver} pumps use socket://host:port or a serial path"
                )
        if (self.driver == "phd") != (self.syringe_diameter_mm is not None):
            raise ValueError(
                "syringe_diameter_mm: required for phd pumps (the pump's rate range follows "
                "the syringe), and only for them"
            )
        if self.driver == "phd" and self.watchdog_s is not None:
            raise ValueError("watchdog_s: a PHD ULTRA has no communication watchdog")
        return self

    @property
    def modbus_unit_id(self) -> int:
        return self.unit_id if self.unit_id is not None else 1

    @property
    def register_map(self) -> str:
        return self.map if self.map is not None else "generic-pump-v1"

    @property
    def newera_address(self) -> int:
        return self.address if self.address is not None else 0


class JournalConfig(_Section):
    """The journal (hash-chained SQLite in ``data_dir``) and how long it keeps rows."""

    retention_days: Annotated[int, Field(ge=1, le=36_500)] = Field(
        default=DEFAULT_RETENTION_DAYS,
        description=(
            "Rows older than this many days are removed, oldest first, at start and then "
            "hourly, a bounded batch at a time. The chain still verifies: it starts from a "
            "recorded anchor. Each pump's latest event of every type is kept in a checkpoint "
            "row, a command still awaiting its result is never forgotten, and undelivered "
            "events (the outbox) are never removed."
        ),
    )


def _listen_address(value: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), port 0..65535; ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
    if not (port.isascii() and port.isdigit() and int(port) <= 65_535):
        raise ValueError(f"port {port!r} must be a number in 0..65535")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError("an IPv6 host goes in brackets: [::1]:8080")
    return value


class HttpConfig(_Section):
    """The HTTP server: the web dashboard, the history API and ``/metrics``."""

    listen: Annotated[str, AfterValidator(_listen_address)] = Field(
        description=(
            "`HOST:PORT` to serve on, e.g. `127.0.0.1:8080` (`[::1]:8080` for IPv6, port 0: "
            "any free port). The API has no authentication: keep it on loopback or a "
            "trusted network."
        ),
    )
    broker_ws_url: Annotated[str, StringConstraints(pattern=r"^wss?://")] | None = Field(
        default=None,
        description=(
            "The broker's WebSocket URL that the dashboard connects to (`ws://` or `wss://`); "
            "without it the page shows the journal's history but no live data."
        ),
    )

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LibraryConfig(_Section):
    """The drug library: which file, and who may replace it while the daemon runs."""

    path: FilePath | None = Field(
        default=None,
        description=(
            "Drug library TOML file; without it the shipped example library is used. SIGHUP "
            "re-reads it (and its signature, PATH.sig) without a restart."
        ),
    )
    require_signature: bool = Field(
        default=False,
        description=(
            "Accept only libraries signed (Ed25519) by one of trusted_keys: at start (PATH.sig), "
            "on SIGHUP and over MQTT (bridge/request/library)."
        ),
    )
    trusted_keys: list[FilePath] = Field(
        default_factory=list,
        description="Ed25519 public keys (SubjectPublicKeyInfo PEM files) that may sign libraries.",
    )
    push_allowlist: list[Name] = Field(
        default_factory=list,
        description=(
            "Who may push a library over MQTT (the request's by.user); empty: MQTT push is off."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        """``library = "PATH"`` (the older form) is ``[library] path = "PATH"``."""
        return {"path": value} if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _keys_when_required(self) -> Self:
        if self.require_signature and not self.trusted_keys:
            raise ValueError("trusted_keys: required when require_signature is true")
        return self


_MLLP_SCHEMES: dict[str, int | None] = {"mllp": None, "tcp": None}


def _mllp_url(value: str) -> str:
    _host_port(value, _MLLP_SCHEMES)
    return value


#: ``mllp://HOST:PORT`` (``tcp://`` also taken), checked when the config is read
MllpUrl = Annotated[str, AfterValidator(_mllp_url)]


class _MllpEndpoint(_Section):
    """A section naming one MLLP endpoint (:meth:`_endpoint`): its host and port."""

    def _endpoint(self) -> str:
        raise NotImplementedError

    @property
    def host(self) -> str:
        return _host_port(self._endpoint(), _MLLP_SCHEMES)[1]

    @property
    def port(self) -> int:
        return _host_port(self._endpoint(), _MLLP_SCHEMES)[2]


class Hl7OutConfig(_MllpEndpoint):
    """``[hl7_out]``: IHE PCD DEC, IPEC and ACM to the EHR / alarm manager (one MLLP link)."""

    url: MllpUrl = Field(
        description="The EHR's MLLP endpoint, mllp://HOST:PORT (tcp:// also taken)."
    )
    dec_period_s: PositiveSeconds = Field(
        default=60.0,
        description="A DEC (PCD-01) for every pump and bed at least this often; a change of "
        "what it reports sends one at once.",
    )
    ack_timeout_s: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)] = Field(
        default=10.0,
        description="No ACK within this: reconnect and send the same message again (same MSH-10).",
    )
    receiving_application: Name = Field(default="EHR", description="MSH-5 of every message.")
    receiving_facility: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="", description="MSH-6 of every message."
    )
    sending_facility: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="", description="MSH-4 of every message (empty: the gateway id)."
    )
    max_frame: Annotated[int, Field(ge=1024, le=1024 * 1024)] = Field(
        default=64 * 1024, description="Largest ACK accepted from the EHR, in bytes."
    )

    def _endpoint(self) -> str:
        return self.url


class PivConfig(_MllpEndpoint):
    """``[piv]``: IHE PCD PIV orders in (RGV^O15 over MLLP); they only ever become pending."""

    listen: MllpUrl = Field(
        description="Where the EHR sends orders, mllp://HOST:PORT (port 0: any free port)."
    )
    idle_timeout_s: PositiveSeconds = Field(
        default=300.0, description="A connection that completes no message for this long is closed."
    )
    max_connections: Annotated[int, Field(ge=1, le=256)] = Field(
        default=8, description="Connections beyond this many are closed at once."
    )
    max_frame: Annotated[int, Field(ge=1024, le=1024 * 1024)] = Field(
        default=64 * 1024,
        description="Largest order accepted, in bytes; a bigger frame is skipped unread.",
    )

    def _endpoint(self) -> str:
        return self.listen


#: a Home Assistant discovery prefix: topic levels without wildcards, not starting with ``$``
DISCOVERY_PREFIX_PATTERN = r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$"


class DiscoveryConfig(_Section):
    """``[discovery]``: Home Assistant MQTT discovery (docs/operator-guide.md)."""

    enabled: bool = Field(
        default=False,
        description="Publish retained Home Assistant discovery configs for every pump and bed.",
    )
    prefix: Annotated[str, StringConstraints(pattern=DISCOVERY_PREFIX_PATTERN)] = Field(
        default="homeassistant",
        description=(
            "Home Assistant's discovery prefix: 1 to 4 topic levels of letters, digits, _ and -."
        ),
    )


class HealthConfig(_Section):
    """``[health]``: the retained ``bridge/health`` payload (docs/operator-guide.md)."""

    publish_every_s: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = Field(
        default=60.0,
        description="Seconds between two retained bridge/health publications (1 to 3600).",
    )


class BedConfig(_Section):
    """``[beds.<id>]``: what the hospital knows about a bed (sent in PID-3)."""

    patient_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="The patient's id sent in PID-3 (without it: the bed id)."
    )
