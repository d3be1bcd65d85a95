"""Shipped patient scenarios (TOML), loaded by ``sim_devices.scenario.load_scenario``."""
