"""Serves readings, rollups, alerts, devices and stats from MongoDB."""
