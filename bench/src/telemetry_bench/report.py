"""Figures, the machine they were measured on, and where they are written."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from telemetry_tools.servers import REPO_ROOT, pom_property

BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SECTION_MARK = "<!-- bench:{date} -->"


@dataclass
class Figure:
    """One measured value beside the ceiling measured in the same run.

    ``ratio`` is value / ceiling. For rates, 1.0 means as fast as the bare
    library; for latencies, 1.0 means no slower than it (higher is worse).
    """

    name: str
    value: float
    unit: str
    ceiling: float | None
    ratio: float | None = field(init=False)
    ceiling_name: str = ""
    goal: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        self.ratio = round(self.value / self.ceiling, 3) if self.ceiling else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu_model,
        "kernel": platform.release(),
    }


def versions(secantus_version: str) -> dict[str, str]:
    return {
        "commit": _git_commit(),
        "python": platform.python_version(),
        "kafka": pom_property("kafka.version"),
        "mongodb_server": secantus_version,
        **{p: _version(p) for p in ("aiokafka", "pymongo", "fastapi", "uvicorn", "orjson")},
    }


@dataclass
class Report:
    profile: str
    machine: dict[str, Any]
    versions: dict[str, str]
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    figures: list[Figure] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase, so a run that grows past its budget shows where."""
        print(f"{name} ...", flush=True)
        started = time.monotonic()
        yield
        self.phase_seconds[name] = round(time.monotonic() - started, 1)
        print(f"{name}: {self.phase_seconds[name]} s", flush=True)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print("  " + _row(figure), flush=True)
        return figure

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "versions": self.versions,
            "date": self.date,
            "profile": self.profile,
            "sizes": self.sizes,
            "phase_seconds": self.phase_seconds,
            "figures": [asdict(f) for f in self.figures],
        }

    def write_json(self, results_dir: Path = RESULTS_DIR) -> Path:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.date[:10]}.json"
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        return path

    def table(self) -> str:
        header = (
            "| figure | value | ceiling (same run) | ratio | goal |\n"
            "| --- | ---: | --- | ---: | --- |"
        )
        return "\n".join([header, *(_row(f) for f in self.figures)])

    def markdown_section(self) -> str:
        m, v = self.machine, self.versions
        sizes = ", ".join(f"{k} {n:,}" for k, n in self.sizes.items())
        return "\n".join(
            [
                SECTION_MARK.format(date=self.date),
                f"## {self.date} ({self.profile})",
                "",
                f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']},"
                f" Linux {m['kernel']}.",
                "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
                f"Sizes: {sizes}." if sizes else "",
                "",
                self.table(),
                "",
                *(f"- {f.name}: {f.note}" for f in self.figures if f.note),
                "",
            ]
        )

    def write_markdown(self, path: Path = BENCHMARKS_MD) -> Path:
        """Put this run's section first under the page's introduction, newest on top."""
        intro = (
            "# Benchmarks\n\n"
            "Written by `make bench` (see `bench/src/telemetry_bench/`). Each figure\n"
            "stands beside a ceiling measured in the same run on the same machine: the\n"
            "same work done by the bare library underneath. `ratio` is value / ceiling:\n"
            "for rates higher is better, for latencies lower is better. Raw results are in\n"
            "`bench/results/`.\n\n"
        )
        previous = path.read_text() if path.exists() else intro
        head, sep, rest = previous.partition("<!-- bench:")
        sections = sep + rest if sep else ""
        path.write_text((head if sep else intro) + self.markdown_section() + "\n" + sections)
        return path


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def _row(f: Figure) -> str:
    ceiling = f"{_fmt(f.ceiling, f.unit)} ({f.ceiling_name})" if f.ceiling else "-"
    return f"| {f.name} | {_fmt(f.value, f.unit)} | {ceiling} | {_fmt(f.ratio)} | {f.goal or '-'} |"
