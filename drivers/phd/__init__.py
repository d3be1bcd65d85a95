"""Harvard Apparatus PHD ULTRA syringe pumps on a pump chain (DESIGN.md section 4.4)."""

from drivers.phd.driver import PhdPumpDriver
from drivers.phd.line import PhdLine

__all__ = ["PhdLine", "PhdPumpDriver"]
