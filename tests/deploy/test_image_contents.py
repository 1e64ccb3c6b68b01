"""What each image's build installs, done as its Dockerfile does it (without Docker):
the locked dependencies of its one package, from the shared library and that
member's sources only. Each image's command then starts, and the workers' images
carry no web framework."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from deploy.tooling import ROOT, run
from telemetry_tools.dockerfiles import IMAGES, MEMBERS, Image

pytestmark = pytest.mark.deploy

UV = ROOT / ".local" / "bootstrap" / "bin" / "uv"
WEB_FRAMEWORK = ("fastapi", "starlette")
# The module each image's command runs (pyproject's [project.scripts]).
ENTRY_MODULES = {
    "ingestion-api": "ingestion_api.__main__",
    "dashboard-api": "dashboard_api.__main__",
    "aggregator-worker": "aggregator_worker.__main__",
    "alerts-worker": "alerts_worker.__main__",
    "tools": "telemetry_tools.loadgen",
}


def build_context(image: Image, into: Path) -> Path:
    """The files the Dockerfile copies: every member's pyproject, the lock, common/, its folder."""
    context = into / "src"
    context.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, context / name)
    for member in MEMBERS:
        (context / member).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / member / "pyproject.toml", context / member / "pyproject.toml")
    ignore = shutil.ignore_patterns("tests", "__pycache__", "Dockerfile")
    for folder in ("common", image.folder):
        shutil.copytree(ROOT / folder, context / folder, dirs_exist_ok=True, ignore=ignore)
    return context


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.folder)
def test_the_image_installs_its_package_and_its_command_starts(
    image: Image, tmp_path: Path
) -> None:
    context = build_context(image, tmp_path)
    venv = tmp_path / "venv"
    sync = run(
        [str(UV), "sync", "--locked", "--no-dev", "--no-editable", "--package", image.package],
        cwd=context,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
    )
    assert sync.returncode == 0, sync.stderr
    python = str(venv / "bin" / "python")
    started = run([python, "-c", f"import {ENTRY_MODULES[image.folder]}"], cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    if image.folder.endswith("-worker"):
        for framework in WEB_FRAMEWORK:
            absent = run([python, "-c", f"import {framework}"], cwd=tmp_path)
            assert absent.returncode != 0, f"{image.folder}'s image carries {framework}"
