"""Tests of protocol/: units, drug library, consistency checker, rule engine, CLI."""
