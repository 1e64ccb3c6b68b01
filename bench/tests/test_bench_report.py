"""The benchmark's report: ratios, the JSON file and BENCHMARKS.md, without any server."""

from __future__ import annotations

import json
from pathlib import Path

from telemetry_bench.report import Figure, Report
from telemetry_tools.percentiles import percentile


def report(date: str, value: float) -> Report:
    r = Report(
        profile="full",
        machine={"cores": 2, "memory_gib": 24.0, "cpu": "test cpu", "kernel": "6.1"},
        versions={"python": "3.11.7", "kafka": "4.1.1"},
        date=date,
    )
    r.add(Figure("ingest readings/s", value, "readings/s", 20_000.0, ceiling_name="bare producer"))
    r.add(Figure("peak RSS", 80.0, "MiB", None))
    return r


def test_ratio_is_value_over_ceiling_and_absent_without_a_ceiling() -> None:
    r = report("2026-11-23T10:00:00Z", 16_000.0)
    assert [f.ratio for f in r.figures] == [0.8, None]


def test_json_has_machine_versions_date_and_figures(tmp_path: Path) -> None:
    path = report("2026-11-23T10:00:00Z", 16_000.0).write_json(tmp_path)
    assert path.name == "2026-11-23.json"
    data = json.loads(path.read_text())
    assert data["machine"]["cores"] == 2
    assert data["versions"]["kafka"] == "4.1.1"
    assert data["date"] == "2026-11-23T10:00:00Z"
    first = data["figures"][0]
    assert {k: first[k] for k in ("name", "value", "unit", "ceiling", "ratio")} == {
        "name": "ingest readings/s",
        "value": 16_000.0,
        "unit": "readings/s",
        "ceiling": 20_000.0,
        "ratio": 0.8,
    }


def test_markdown_keeps_earlier_runs_below_the_newest(tmp_path: Path) -> None:
    page = tmp_path / "BENCHMARKS.md"
    report("2026-11-22T10:00:00Z", 10_000.0).write_markdown(page)
    report("2026-11-23T10:00:00Z", 16_000.0).write_markdown(page)
    text = page.read_text()
    assert text.count("# Benchmarks") == 1
    newer, older = text.index("## 2026-11-23"), text.index("## 2026-11-22")
    assert newer < older
    assert "Machine: 2 cores, 24.0 GiB, test cpu" in text
    assert (
        "| ingest readings/s | 16,000 readings/s | 20,000 readings/s (bare producer) | 0.80 |"
        in text
    )


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.99) == 0.0
