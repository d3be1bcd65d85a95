"""The retained ``bridge/info`` payload: what this gateway runs (version, session, library,
pumps with their drugs, beds, whether control is enabled, the payload schemas it speaks)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from importlib.metadata import version as package_version

from daemon.base.config import Config
from daemon.base.envelope import SCHEMA_IDS
from daemon.base.payload import JsonObject
from daemon.core.program import Program
from protocol.library import Library


def bridge_info(
    config: Config,
    *,
    session: str,
    started_at: datetime,
    library: Library,
    programs: Mapping[str, Program],
) -> JsonObject:
    """The ``bridge.info`` data; ``programs`` is what each configured pump runs now."""
    return {
        "version": package_version("infusiond"),
        "session": session,
        "started_at": started_at,
        "library": library.identity.to_dict(),
        "pumps": [
            {
                "id": p.id,
                "driver": p.driver,
                "bed": p.bed,
                "drug": programs[p.id].drug,
                "profile": programs[p.id].profile,
            }
            for p in config.pumps
        ],
        "beds": [v.bed for v in config.vitals],
        "control_enabled": config.control.enabled,
        "schemas": list(SCHEMA_IDS),
    }
