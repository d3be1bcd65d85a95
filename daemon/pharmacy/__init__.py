"""Pharmacy tools: signed drug libraries, hot reload, library diff and the CQI report."""
