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


def test_injected_spikes_and_silences_raise_the_alerts_verify_looks_for(
    stack: Stack, tmp_path: Path
) -> None:
    """Spikes of six deviations on two devices, two devices silent for the run's last
    twelve seconds: an anomaly rule and an absent rule on those devices flag exactly
    those, and --verify finds each alert."""
    devices = [f"inject-{d}" for d in range(6)]
    rules = [
        {"name": "Unusual", "metric": "temperature_c", "kind": "anomaly"},
        {"name": "Offline", "kind": "absent", "for": "3s"},
    ]
    created = []
    for rule in rules:
        answer = requests.post(
            url(stack, "dashboard-api", "/alerts/rules"),
            json={**rule, "scope": "devices", "devices": devices},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        created.append(answer.json()["rule_id"])
    try:
        summary = run_loadgen(
            stack, tmp_path,
            "--devices", "6", "--rps", "5", "--duration", "20", "--seed", "8",
            "--device-prefix", "inject-", "--spikes", "2", "--spike-after", "40",
            "--silent-devices", "2", "--silence-at", "8",
            "--verify", "--verify-timeout", "60",
        )  # fmt: skip
    finally:
        for rule_id in created:
            requests.delete(url(stack, "dashboard-api", f"/alerts/rules/{rule_id}"), timeout=10)
    checked = summary["alert_verification"]
    assert (checked["spikes"], checked["spikes_checked"], checked["spikes_missed"]) == (2, 2, [])
    assert (checked["silences"], checked["silences_checked"]) == (2, 2)
    assert checked["silences_unflagged"] == []
    assert checked["flagged_offline_while_reporting"] == []
    assert checked["ok"] is True
    assert summary["verification"]["ok"] is True
