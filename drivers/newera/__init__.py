"""New Era NE-500/NE-1000-family syringe pumps over RS-232 (docs/biomed-guide.md)."""

from drivers.newera.driver import NewEraPumpDriver
from drivers.newera.port import NewEraPort

__all__ = ["NewEraPort", "NewEraPumpDriver"]
