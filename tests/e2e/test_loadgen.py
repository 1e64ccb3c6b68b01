"""The load generator against the running stack: its rate holds and its verification is right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from e2e.helpers import url
from telemetry_tools import loadgen
from telemetry_tools.stack import Stack

pytestmark = pytest.mark.e2e


def run_loadgen(stack: Stack, tmp_path: Path, *options: str) -> dict:
    summary_path = tmp_path / "summary.json"
    try:
        loadgen.main(
            [
                "--base-url", url(stack, "ingestion-api", ""),
                "--dashboard-url", url(stack, "dashboard-api", ""),
                "--quiet", "--json", str(summary_path), *options,
            ]
        )  # fmt: skip
    except SystemExit as exit_:
        assert exit_.code == 1, exit_.code
    return json.loads(summary_path.read_text())


def test_100_devices_for_10_seconds_hold_the_rate_and_verify_every_reading(
    stack: Stack, tmp_path: Path
) -> None:
    summary = run_loadgen(
        stack, tmp_path,
        "--devices", "100", "--rps", "2", "--duration", "10", "--seed", "3",
        "--device-prefix", "rate-", "--verify", "--verify-timeout", "90",
    )  # fmt: skip

    assert summary["rejected"] == {}
    assert summary["target_rps"] == 200
    assert abs(summary["sent_vs_target"] - 1) <= 0.05, summary
    assert summary["accepted"] == summary["sent"]
    verification = summary["verification"]
    assert verification["missing"] == 0, verification
    assert verification["double_counted"] == 0, verification
    assert verification["counted"] == summary["accepted"]
    assert verification["ok"] is True


def test_verification_is_judged_on_what_this_run_added(stack: Stack, tmp_path: Path) -> None:
    """A second run for the same devices must not blame the first run's readings on itself."""
    options = ("--devices", "5", "--rps", "10", "--total", "40", "--batch", "4",
               "--device-prefix", "again-", "--verify", "--verify-timeout", "60")  # fmt: skip
    first = run_loadgen(stack, tmp_path, *options)
    second = run_loadgen(stack, tmp_path, *options)

    assert first["verification"]["ok"] and second["verification"]["ok"]
    assert second["verification"]["counted"] == 40
    devices = requests.get(url(stack, "dashboard-api", "/devices?limit=1000"), timeout=10).json()
    total = sum(d["reading_count"] for d in devices["data"] if d["device_id"].startswith("again-"))
    assert total == 80


def test_a_bad_metrics_spec_names_the_part_that_is_wrong(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        loadgen.main(["--metrics", "temperature_c=15:35,humidity=high"])
    assert exit_.value.code == 2
    assert "'humidity=high': expected name=low:high" in capsys.readouterr().err
