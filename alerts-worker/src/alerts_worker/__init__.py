"""Evaluates threshold rules on readings from telemetry.raw and records alerts."""
