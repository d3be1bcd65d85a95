"""Harvard Apparatus PHD ULTRA syringe pumps on a pump chain (RS-232/USB "pump chain" protocol)."""

from drivers.phd.driver import PhdPumpDriver
from drivers.phd.line import PhdLine

__all__ = ["PhdLine", "PhdPumpDriver"]
