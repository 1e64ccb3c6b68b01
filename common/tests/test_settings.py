"""A service given a bad setting stops at start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from telemetry_common.infra.settings import (
    AggregatorSettings,
    AlertsSettings,
    IngestionSettings,
    load_settings,
)


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("ingestion_api", "PORT", "eighty"),
        ("dashboard_api", "MONGO_URL", "postgres://db"),
        ("aggregator_worker", "ROLLUP_RESOLUTIONS", "7m"),
        ("aggregator_worker", "ROLLUP_RETENTION", "1w=7d"),
        ("aggregator_worker", "RAW_RETENTION", "a week"),
        ("alerts_worker", "MAX_RETRIES", "0"),
        ("alerts_worker", "TEMP_MAX_THRESHOLD", "hot"),
    ],
)
def test_service_refuses_to_start_and_names_the_variable(
    module: str, variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{variable}={value!r}" in result.stderr


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "MONGO_", "TEMP_", "HUMIDITY_", "MAX_RETRIES")):
            monkeypatch.delenv(name)
    settings = load_settings(AlertsSettings)
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.mongo_db == "iotdb"
    assert (settings.telemetry_topic, settings.dlq_topic) == ("telemetry.raw", "telemetry.dlq")
    assert settings.max_retries == 3
    assert (settings.temp_min_threshold, settings.temp_max_threshold) == (-10, 50)
    assert (settings.humidity_min_threshold, settings.humidity_max_threshold) == (0, 100)


def test_a_placeholder_admin_key_stops_the_service_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("ADMIN_API_KEY", "change-me")
    with pytest.raises(SystemExit) as exit_:
        load_settings(IngestionSettings)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "ADMIN_API_KEY=<hidden>" in err and "placeholder" in err
    assert "change-me" not in err


def test_rollup_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROLLUP_RESOLUTIONS", "ROLLUP_RETENTION", "RAW_RETENTION", "RAW_RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(AggregatorSettings)
    assert list(settings.resolutions) == ["1m", "5m", "15m", "1h", "1d"]
    assert settings.retention["1m"] == timedelta(days=7)
    assert settings.retention["1d"] is None
    assert settings.raw_retention_period == timedelta(days=7)


def test_custom_resolutions_keep_the_default_retention_they_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLUP_RESOLUTIONS", "1m,30m,1h")
    monkeypatch.delenv("ROLLUP_RETENTION", raising=False)
    settings = load_settings(AggregatorSettings)
    assert settings.retention == {"1m": timedelta(days=7), "30m": None, "1h": timedelta(days=365)}


def test_raw_retention_wins_over_the_older_days_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_RETENTION_DAYS", "3")
    assert load_settings(AggregatorSettings).raw_retention_period == timedelta(days=3)
    monkeypatch.setenv("RAW_RETENTION", "36h")
    assert load_settings(AggregatorSettings).raw_retention_period == timedelta(hours=36)
