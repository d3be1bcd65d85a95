"""The integration guide's topic table covers every channel of the AsyncAPI description."""

from __future__ import annotations

import re

import yaml

from tests.docs.docs_text import ASYNCAPI, DOCS


def test_every_asyncapi_channel_is_in_the_integration_guide_topic_table() -> None:
    """Each `infusiond/{gateway_id}/...` address of docs/asyncapi.yaml is a row of the guide's
    "Topics" table (with `<pump_id>`/`<bed_id>` for the parameters), and each row is a channel."""
    api = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    prefix = "infusiond/{gateway_id}/"
    channels = set()
    for channel in api["channels"].values():
        address = str(channel["address"])
        assert address.startswith(prefix), address
        channels.add(re.sub(r"\{(\w+)\}", r"<\1>", address.removeprefix(prefix)))
    guide = (DOCS / "integration-guide.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Topics") : guide.index("## Subscribing")]
    rows = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.MULTILINE)}
    assert rows == channels
