"""The daemon's configuration: a TOML file plus ``INFUSIOND_*`` environment overrides.

Environment variables override the file; nested keys use ``__``
(``INFUSIOND_BROKER__URL=mqtts://broker:8883``, ``INFUSIOND_CONTROL__ENABLED=true``); lists take
JSON (``INFUSIOND_CONTROL__ALLOWLIST='["dr-a"]'``). Any invalid value raises
:class:`daemon.errors.ConfigError` whose message names the offending key (and the environment
variable, when the value came from one). Unknown keys are errors too: a typo must not silently
fall back to a default at a bedside.
"""

from __future__ import annotations

import os
import re
import tomllib
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
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from daemon.errors import ConfigError
from daemon.journal import DEFAULT_RETENTION_DAYS
from daemon.paths import default_data_dir
from daemon.topics import TOPIC_ID_PATTERN
from protocol.request import field_path

ENV_PREFIX = "INFUSIOND_"
ENV_NESTED = "__"

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
    """MQTT broker connection (MQTT v5; 3.1.1 only for brokers without v5, e.g. the demo's)."""

    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description=(
            "MQTT protocol version. Keep 5 in production: with 3.1.1 a standard broker clears "
            "the retain flag of live messages, so a retained command published while the daemon "
            "is subscribed cannot be recognised (the demo's embedded broker keeps the flag; "
            "other 3.1.1 brokers do not), and response_topic/correlation_data are not available."
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
            "path of a file holding the key (see daemon.signing). Never the key itself."
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


class BedConfig(_Section):
    """``[beds.<id>]``: what the hospital knows about a bed (sent in PID-3)."""

    patient_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="The patient's id sent in PID-3 (without it: the bed id)."
    )


class Config(BaseSettings):
    """The whole configuration (see ``systemd/infusiond.example.toml``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    gateway_id: TopicId
    data_dir: Path = Field(default_factory=default_data_dir)
    library: LibraryConfig | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    vitals: list[VitalsSource] = Field(default_factory=list)
    pumps: list[PumpConfig] = Field(default_factory=list)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    hl7_out: Hl7OutConfig | None = Field(
        default=None,
        description="IHE PCD DEC, IPEC and ACM to the EHR (docs/ehr-integration.md); off when "
        "absent.",
    )
    piv: PivConfig | None = Field(
        default=None,
        description="IHE PCD PIV orders in; each becomes a pending program that a clinician "
        "confirms. Off when absent.",
    )
    http: HttpConfig | None = Field(
        default=None,
        description="The HTTP server (dashboard, `/api/events`, `/api/history`, `/metrics`); "
        "off when absent.",
    )
    beds: dict[TopicId, BedConfig] = Field(
        default_factory=dict, description="What the hospital knows about each bed, by bed id."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file (passed as init values); nothing else is read."""
        del settings_cls, dotenv_settings, file_secret_settings
        return env_settings, init_settings

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        for name, ids in (
            ("pumps", [p.id for p in self.pumps]),
            ("vitals", [v.bed for v in self.vitals]),
        ):
            seen: set[str] = set()
            for index, item in enumerate(ids):
                if item in seen:
                    key = "id" if name == "pumps" else "bed"
                    raise ValueError(f"{name}[{index}].{key}: {item!r} is used twice")
                seen.add(item)
        return self

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"infusiond-{self.gateway_id}"

    def pump(self, pump_id: str) -> PumpConfig | None:
        return next((p for p in self.pumps if p.id == pump_id), None)


_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")


def _key_name(loc: tuple[int | str, ...]) -> str:
    return field_path(loc) if loc else "config"


def _env_name(loc: tuple[int | str, ...], env: dict[str, str]) -> str | None:
    """The environment variable that supplied ``loc`` (or its enclosing list), if any."""
    names = [str(p) for p in loc]
    for cut in range(len(names), 0, -1):
        if any(isinstance(p, int) for p in loc[:cut]):
            continue
        candidate = (ENV_PREFIX + ENV_NESTED.join(names[:cut])).upper()
        if candidate in env:
            return candidate
    return None


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at ``loc`` may hold (empty when ``loc`` is not inside a model)."""
    model: type[BaseModel] = Config
    for step in loc:
        if isinstance(step, int):
            continue
        info = model.model_fields.get(str(step))
        if info is None:
            return []
        stack: list[Any] = [info.annotation]
        found: type[BaseModel] | None = None
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                found = ann
                break
            stack.extend(getattr(ann, "__args__", ()))
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def config_problems(exc: ValidationError) -> list[str]:
    """Every problem of ``exc`` as ``table.key: what is wrong`` (with the environment variable
    that supplied the value, and for an unknown key the keys that table allows)."""
    env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        key = _key_name(loc)
        if _NAMED.match(msg):
            # a model validator that names a field of its own section
            inner, msg = msg.split(": ", 1)
            key = inner if not key or key == "config" else f"{key}.{inner}"
            loc = (*loc, *inner.split("."))
        if err["type"] == "missing":
            msg = "required key missing"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            msg = "unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else "")
        where = _env_name(loc, env)
        origin = f" (from {where})" if where else ""
        problems.append(f"{key}{origin}: {msg}")
    return problems


def load_config(path: Path | None) -> Config:
    """Read ``path`` (TOML) and the environment; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    source = "the environment"
    if path is not None:
        source = str(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(
            *config_problems(exc), context=f"invalid configuration in {source}: "
        ) from None
    except SettingsError as exc:  # an environment value that is not valid JSON for its key
        raise ConfigError(f"invalid configuration in the environment: {exc}") from None
