"""Shipped example drug libraries (TOML data files; a package so that wheels include them)."""
