"""Discovery configs and their configuration, without a broker: ids, removal, bad prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.base.config import DiscoveryConfig, HealthConfig, load_config
from daemon.base.errors import ConfigError
from daemon.base.topics import Topics
from daemon.mqtt.discovery import PumpInfo, discovery_configs, publish

PUMPS = [
    PumpInfo("pump-1", "norepinephrine", "ug/kg/min", "modbus"),
    PumpInfo("icu.3", "vasopressin", "[USP'U]/min", "newera"),
]


def test_node_ids_keep_to_letters_digits_underscore_and_dash() -> None:
    """A pump id with a dot becomes ``_`` in the topic; its unique ids keep the real id."""
    configs = discovery_configs(Topics("gw.a"), prefix="ha", version="1", pumps=PUMPS, beds=[])
    assert "ha/sensor/infusiond_gw_a_icu_3/rate/config" in configs
    rate = json.loads(configs["ha/sensor/infusiond_gw_a_icu_3/rate/config"])
    assert rate["unique_id"] == "infusiond_gw.a_icu.3_rate"
    assert rate["state_topic"] == "infusiond/gw.a/pump/icu.3/state"


@pytest.mark.asyncio
async def test_turning_discovery_off_clears_every_config_published_before(tmp_path: Path) -> None:
    """Enabled: 10 configs published and remembered; disabled at the next start: the same 10
    topics get an empty retained payload, and nothing is left to clear after that."""
    published: list[tuple[str, bytes]] = []

    async def start(enabled: bool) -> list[tuple[str, bytes]]:
        published.clear()
        await publish(
            lambda topic, payload: published.append((topic, payload)),
            Topics("gw"),
            DiscoveryConfig(enabled=enabled),
            data_dir=tmp_path,
            version="1",
            pumps=PUMPS,
            beds=[],
        )
        return list(published)

    first = await start(True)
    assert len(first) == 10
    assert all(payload for _, payload in first)
    second = await start(False)
    assert sorted(topic for topic, _ in second) == sorted(topic for topic, _ in first)
    assert all(payload == b"" for _, payload in second)
    assert await start(False) == []


@pytest.mark.parametrize("prefix", ["", "home/#", "$SYS", "a/+/b", "a//b", "x" * 65])
def test_a_bad_discovery_prefix_is_refused_naming_the_key(tmp_path: Path, prefix: str) -> None:
    """The prefix must be 1-4 topic levels of letters, digits, _ and -; the error names it."""
    path = tmp_path / "c.toml"
    path.write_text(
        f'gateway_id = "gw"\n[discovery]\nenabled = true\nprefix = {json.dumps(prefix)}\n'
    )
    with pytest.raises(ConfigError, match=r"discovery\.prefix"):
        load_config(path)


@pytest.mark.parametrize("every", [0, 0.5, 3601])
def test_a_health_period_out_of_range_is_refused_naming_the_key(
    tmp_path: Path, every: float
) -> None:
    """``[health] publish_every_s`` is 1 to 3600 seconds; the error names the key."""
    path = tmp_path / "c.toml"
    path.write_text(f'gateway_id = "gw"\n[health]\npublish_every_s = {every}\n')
    with pytest.raises(ConfigError, match=r"health\.publish_every_s"):
        load_config(path)
    assert HealthConfig().publish_every_s == 60
