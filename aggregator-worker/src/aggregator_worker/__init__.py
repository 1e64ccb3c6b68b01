"""Folds readings from telemetry.raw into time-bucketed rollups and device summaries in MongoDB."""
