"""Where the deployment checks find their tools (`make deploy-tools`) and the files they check."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
SERVICES = {
    "ingestion-api": 8001,
    "dashboard-api": 8002,
    "aggregator-worker": 8003,
    "alerts-worker": 8004,
}


def tool(name: str) -> str:
    """The tool `make deploy-tools` installed; a clear failure, never a skip, when it is missing."""
    candidates = [
        os.environ.get(f"TELEMETRY_{name.upper()}"),
        str(Path(sys.executable).parent / name),
        str(ROOT / ".local" / "go" / "bin" / name),
        str(ROOT / ".local" / name / "bin" / name),
        shutil.which(name),
    ]
    for path in candidates:
        if path and Path(path).exists():
            return path
    raise AssertionError(f"{name} is not installed: run `make deploy-tools`")


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


@functools.cache
def rendered_text(overlay: str) -> str:
    result = run([tool("kustomize"), "build", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return result.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec an object would start, keyed by kind/name."""
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    }


def as_json(docs: list[dict[str, Any]]) -> str:
    return json.dumps(docs, default=str)
