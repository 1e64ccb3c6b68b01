"""The Dockerfiles and docker-compose.yml, checked by hadolint, docker-compose and promtool."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy.tooling import ROOT, SERVICES, run, tool
from telemetry_tools.dockerfiles import IMAGES, Image, render

pytestmark = pytest.mark.deploy

DOCKERFILES = [ROOT / image.folder / "Dockerfile" for image in IMAGES]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should() -> None:
    # The check above means something only if hadolint fails a bad file.
    bad = "FROM python:latest\nRUN apt-get install curl\n"
    result = run([tool("hadolint"), "-"], input=bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3008" in result.stdout or "DL3015" in result.stdout  # unpinned apt


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.folder)
def test_dockerfile_is_the_rendered_template(image: Image) -> None:
    committed = (ROOT / image.folder / "Dockerfile").read_text()
    assert committed == render(image), "run `make dockerfiles` and commit the result"


def final_stage(dockerfile: str) -> str:
    return dockerfile.rsplit("\nFROM ", 1)[1]


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.folder)
def test_image_is_multi_stage_locked_non_root_and_without_build_tools(image: Image) -> None:
    text = render(image)
    final = final_stage(text)
    # Locked dependencies install before the code is copied: their layer is cached.
    deps = text.index("--no-install-workspace")
    assert deps < text.index(f"COPY {image.folder}/ {image.folder}/")
    assert "uv sync --locked" in text
    assert re.search(r"^USER 10001", final, re.M), "the final image runs as a non-root uid"
    assert "/uv" not in final and "apt-get" not in final and "gcc" not in final
    if image.port is None:
        assert "HEALTHCHECK NONE" in final
    else:
        assert f"EXPOSE {image.port}" in final and "HEALTHCHECK --interval" in final
        assert SERVICES[image.folder] == image.port


def compose(*args: str, env_file: str | None = ".env.example") -> tuple[int, str]:
    command = [tool("docker-compose"), "--project-directory", str(ROOT)]
    if env_file:
        command += ["--env-file", str(ROOT / env_file)]
    # The checks read the committed example, never a developer's own .env.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "GRAFANA_"))}
    result = run([*command, "-f", str(ROOT / "docker-compose.yml"), *args], env=env, cwd="/")
    return result.returncode, result.stdout + result.stderr


def test_docker_compose_accepts_the_file() -> None:
    code, output = compose("--profile", "load", "config", "-q")
    assert code == 0, output


def test_compose_refuses_to_start_without_the_secrets() -> None:
    code, output = compose("config", "-q", env_file=None)
    assert code != 0
    assert "copy .env.example to .env" in output


def volumes(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, from docker-compose's short form `source:target[:mode]`."""
    pairs = (volume.split(":")[:2] for volume in service["volumes"])
    return {target: source for source, target in pairs}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    code, output = compose("--profile", "load", "config")
    assert code == 0, output
    return yaml.safe_load(output)["services"]


def test_compose_runs_kafka_in_kraft_mongodb_7_and_the_services_on_their_ports(
    services: dict[str, Any],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in name for name in services)
    assert services["mongodb"]["image"] == "mongo:7"
    assert volumes(services["mongodb"])["/data/db"] == "mongo-data"
    for name, port in SERVICES.items():
        service = services[name]
        assert service["build"]["dockerfile"] == f"{name}/Dockerfile"
        assert service["build"]["context"] == str(ROOT)
        assert [(int(p["published"]), int(p["target"])) for p in service["ports"]] == [(port, port)]
        assert service["healthcheck"]["test"][0] == "CMD"
        assert all(d["condition"].startswith("service_") for d in service["depends_on"].values())


def test_compose_secrets_come_from_the_env_file(services: dict[str, Any]) -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert (
        example["MONGO_ROOT_PASSWORD"] in services["aggregator-worker"]["environment"]["MONGO_URL"]
    )
    assert services["mongodb"]["environment"]["MONGO_INITDB_ROOT_PASSWORD"] == "change-me"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "change-me"
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in raw, "no secret value is written in docker-compose.yml"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_compose_loadgen_runs_only_under_its_profile(services: dict[str, Any]) -> None:
    assert services["loadgen"]["profiles"] == ["load"]
    assert services["loadgen"]["command"][0] == "telemetry-loadgen"
    assert "--base-url=http://ingestion-api:8001" in services["loadgen"]["command"]
    assert [name for name, s in services.items() if "profiles" in s] == ["loadgen"]


def test_compose_prometheus_scrapes_all_four_and_grafana_has_the_dashboard(
    services: dict[str, Any],
) -> None:
    config = ROOT / "observability" / "prometheus" / "prometheus.yml"
    result = run([tool("promtool"), "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    for name, port in SERVICES.items():
        assert jobs[name]["static_configs"][0]["targets"] == [f"{name}:{port}"]
    mounts = volumes(services["grafana"])
    dashboards = Path(mounts["/var/lib/grafana/dashboards"])
    assert (dashboards / "telemetry.json").exists()
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    provider = yaml.safe_load((provisioning / "dashboards" / "telemetry.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
