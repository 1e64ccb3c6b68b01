"""Fixtures for every test folder: the real servers live in telemetry_tools.testing."""

pytest_plugins = ["telemetry_tools.testing"]
