"""The daemon's configuration: a TOML file plus ``INFUSIOND_*`` environment overrides.

The tables are modelled in :mod:`daemon.base.config_sections`; this module assembles them,
reads the file and the environment, and lists every problem. Environment variables override
the file; nested keys use ``__``
(``INFUSIOND_BROKER__URL=mqtts://broker:8883``, ``INFUSIOND_CONTROL__ENABLED=true``); lists take
JSON (``INFUSIOND_CONTROL__ALLOWLIST='["dr-a"]'``). Any invalid value raises
:class:`daemon.base.errors.ConfigError` whose message names the offending key (and the environment
variable, when the value came from one). Unknown keys are errors too: a typo must not silently
fall back to a default at a bedside.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from daemon.base.config_sections import (
    BedConfig,
    BrokerConfig,
    ControlConfig,
    DiscoveryConfig,
    HealthConfig,
    Hl7OutConfig,
    HttpConfig,
    JournalConfig,
    LibraryConfig,
    PivConfig,
    PumpConfig,
    TopicId,
    VitalsSource,
)
from daemon.base.errors import ConfigError
from daemon.base.paths import default_data_dir
from daemon.base.payload import JsonObject
from protocol.request import field_path

ENV_PREFIX = "INFUSIOND_"
ENV_NESTED = "__"


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
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig,
        description="Home Assistant MQTT discovery; off unless enabled.",
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig,
        description="The retained bridge/health payload (the figures of GET /metrics).",
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
    data: JsonObject = {}
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
