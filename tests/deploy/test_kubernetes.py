"""k8s/: every overlay renders, validates against Kubernetes and CRD schemas, passes checkov."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy.tooling import (
    K8S,
    OVERLAYS,
    SERVICES,
    as_json,
    of_kind,
    pod_templates,
    rendered,
    rendered_text,
    run,
    tool,
)
from telemetry_common.infra.kafka.topics import default_topics

pytestmark = pytest.mark.deploy

KUBERNETES_VERSION = "1.33.0"
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "kafka.strimzi.io/")
Docs = list[dict[str, Any]]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> Docs:
    return rendered(request.param)


def test_every_overlay_renders_the_four_services_and_their_infrastructure(docs: Docs) -> None:
    kinds = defaultdict(set)
    for doc in docs:
        kinds[doc["kind"]].add(doc["metadata"]["name"])
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "telemetry", doc["metadata"]
    assert set(SERVICES) <= kinds["Deployment"]
    assert set(SERVICES) <= kinds["Service"]
    assert set(SERVICES) <= kinds["PodDisruptionBudget"]
    assert set(SERVICES) == kinds["ServiceMonitor"]
    assert {"telemetry-config"} <= {n.rsplit("-", 1)[0] for n in kinds["ConfigMap"]}
    assert kinds["Kafka"] == {"telemetry"} and kinds["KafkaNodePool"]
    assert kinds["StatefulSet"] == {"mongodb"}


def test_core_objects_validate_strictly_against_the_kubernetes_schemas(docs: Docs) -> None:
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")
        checked += 1
    assert checked >= 25


def test_kubernetes_validation_refuses_a_misspelt_field() -> None:
    deployment = of_kind(rendered("dev"), "Deployment")["ingestion-api"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def crd_errors(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """KEDA and Prometheus Operator objects, by the schemas their CRDs publish on npm."""
    result = run(["node", str(K8S / "crd-validate" / "validate.mjs")], input=as_json(docs))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {f"{line['kind']}/{line['name']}": line["errors"] for line in lines}


def test_keda_and_prometheus_operator_objects_validate_against_their_crds(docs: Docs) -> None:
    errors = crd_errors(docs)
    expected = {
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))
    }
    assert set(errors) == expected and len(expected) == 7
    assert {name: e for name, e in errors.items() if e} == {}


def test_crd_validation_refuses_a_wrong_type() -> None:
    scaled = of_kind(rendered("dev"), "ScaledObject")["aggregator-worker"]
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["maxReplicaCount"] = "six"
    assert crd_errors([broken])["ScaledObject/aggregator-worker"]


def strimzi_schema(kind: str) -> dict[str, Any]:
    return json.loads((K8S / "schemas" / f"strimzi-{kind.lower()}-v1beta2.json").read_text())


def test_strimzi_objects_validate_against_their_schemas(docs: Docs) -> None:
    strimzi = [d for d in docs if d["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {d["kind"] for d in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic"}
    for doc in strimzi:
        jsonschema.validate(doc, strimzi_schema(doc["kind"]))


def test_strimzi_schema_refuses_an_unknown_field() -> None:
    topic = of_kind(rendered("prod"), "KafkaTopic")["telemetry-raw"]
    broken = {**topic, "spec": {**topic["spec"], "partition": 6}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, strimzi_schema("KafkaTopic"))


def checkov_failures(overlay: str, tmp_path: Path) -> dict[str, set[str]]:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    # --skip-download: checkov otherwise calls its vendor's API for guidelines.
    options = ["--framework", "kubernetes", "--output", "json", "--compact", "--quiet"]
    result = run([tool("checkov"), "-f", str(manifest), *options, "--skip-download"], cwd=tmp_path)
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 400
    failures: dict[str, set[str]] = defaultdict(set)
    for check in report["results"]["failed_checks"]:
        failures[check["check_id"]].add(check["resource"])
    return failures


def test_checkov_fails_nothing_that_is_not_written_down_with_its_reason(tmp_path: Path) -> None:
    accepted = yaml.safe_load((K8S / "checkov" / "accepted.yaml").read_text())
    assert all(entry["reason"].strip() for entry in accepted.values())
    seen: dict[str, set[str]] = defaultdict(set)
    for overlay in OVERLAYS:
        for check, resources in checkov_failures(overlay, tmp_path).items():
            allowed = set(accepted.get(check, {}).get("resources", []))
            assert resources <= allowed, f"{overlay}: {check} fails on {resources - allowed}"
            seen[check] |= resources
    stale = {c: set(e["resources"]) - seen[c] for c, e in accepted.items()}
    assert not any(stale.values()), f"accepted but no longer failing: {stale}"


def test_promtool_accepts_the_prometheus_rules(tmp_path: Path) -> None:
    rule = of_kind(rendered("prod"), "PrometheusRule")["telemetry"]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = run([tool("promtool"), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for needed in ("ConsumerLag", "DeadLetters", "ErrorRate", "ServiceDown"):
        assert any(needed in name for name in alerts), needed


def test_the_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    """promtool's rule unit tests: k8s/base/monitoring/prometheus-rules.test.yaml."""
    rule = of_kind(rendered("prod"), "PrometheusRule")["telemetry"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule["spec"]))
    cases = tmp_path / "rules.test.yaml"
    cases.write_text((K8S / "base" / "monitoring" / "prometheus-rules.test.yaml").read_text())
    result = run([tool("promtool"), "test", "rules", str(cases)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_pod_meets_the_restricted_pod_security_standard(docs: Docs) -> None:
    namespace = of_kind(docs, "Namespace")["telemetry"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in pod_templates(docs).items():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name


def test_services_have_probes_on_their_port_and_configuration_from_configmap_and_secret(
    docs: Docs,
) -> None:
    deployments = of_kind(docs, "Deployment")
    for name, port in SERVICES.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert container["livenessProbe"]["tcpSocket"]["port"] == "http"
        assert container["envFrom"][0]["configMapRef"]["name"].startswith("telemetry-config")
        secret_refs = [
            e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
        ]
        # The two APIs: MONGO_URL and ADMIN_API_KEY (API keys, dashboard writes); the
        # workers MONGO_URL.
        expected = 2 if name in ("ingestion-api", "dashboard-api") else 1
        assert secret_refs == ["telemetry-secrets"] * expected


def test_apis_autoscale_on_cpu_with_a_scale_down_window(docs: Docs) -> None:
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"ingestion-api", "dashboard-api"}
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_workers_scale_on_consumer_lag_capped_at_the_partition_count(docs: Docs) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind(docs, "KafkaTopic").values()}
    partitions = topics["telemetry.raw"]["partitions"]
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == {"aggregator-worker", "alerts-worker"}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["maxReplicaCount"] == partitions
        trigger = spec["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == name
        assert trigger["metadata"]["topic"] == "telemetry.raw"
        assert trigger["metadata"]["allowIdleConsumers"] == "false"


def test_kafka_topics_match_what_the_services_create_locally(docs: Docs) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind(docs, "KafkaTopic").values()}
    nodes = sum(p["spec"]["replicas"] for p in of_kind(docs, "KafkaNodePool").values())
    for local in default_topics():
        spec = topics[local.name]
        assert spec["partitions"] == local.partitions
        assert str(spec["config"]["retention.ms"]) == local.config["retention.ms"]
        assert spec["replicas"] == min(3, nodes)
        assert spec["config"]["min.insync.replicas"] == max(1, spec["replicas"] - 1)


def test_mongodb_is_a_replica_set_with_storage(docs: Docs) -> None:
    mongo = of_kind(docs, "StatefulSet")["mongodb"]
    container = mongo["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("mongo:7")
    assert container["args"][:2] == ["--replSet", "rs0"]
    assert mongo["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    members = mongo["spec"].get("replicas", 1)
    init = of_kind(docs, "Job")["mongodb-rs-init"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MEMBERS", "value": str(members)} in init["env"]


def test_prod_runs_three_kafka_nodes_and_three_mongodb_members() -> None:
    docs = rendered("prod")
    assert sum(p["spec"]["replicas"] for p in of_kind(docs, "KafkaNodePool").values()) == 3
    assert of_kind(docs, "StatefulSet")["mongodb"]["spec"]["replicas"] == 3
    assert not of_kind(docs, "Secret"), "prod Secrets are created outside the repository"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    return all(labels.get(k) == v for k, v in match.items()) and all(
        labels.get(e["key"]) in e["values"] for e in expressions if e["operator"] == "In"
    )


def test_network_policies_deny_by_default_and_let_only_what_must_talk_talk(docs: Docs) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    labels = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for name, d in of_kind(docs, "Deployment").items()
    }

    def egress_ports(service: str) -> set[int]:
        ports = set()
        for policy in policies.values():
            spec = policy["spec"]
            if "Egress" in spec["policyTypes"] and selects(spec["podSelector"], labels[service]):
                ports |= {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        return ports

    # ingestion-api reads device API keys from MongoDB.
    assert egress_ports("ingestion-api") == {53, 9092, 27017}
    # dashboard-api reads alerts.triggered for the alert stream.
    assert egress_ports("dashboard-api") == {53, 9092, 27017}
    assert egress_ports("aggregator-worker") == {53, 9092, 27017}
    # Webhooks: public addresses only, never the cluster's or the metadata service's.
    assert egress_ports("alerts-worker") == {53, 80, 443, 9092, 27017}
    webhooks = policies["alerts-worker-webhooks-egress"]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert {"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"} <= set(webhooks["except"])
    mongo_peers = policies["mongodb"]["spec"]["ingress"][0]["from"]
    allowed = [p["podSelector"] for p in mongo_peers]
    for reader in ("ingestion-api", "dashboard-api", "aggregator-worker", "alerts-worker"):
        assert any(selects(s, labels[reader]) for s in allowed), reader
    kafka = of_kind(docs, "Kafka")["telemetry"]["spec"]["kafka"]["listeners"][0]
    kafka_peers = [p["podSelector"] for p in kafka["networkPolicyPeers"] if "podSelector" in p]
    for client in ("ingestion-api", "dashboard-api", "aggregator-worker", "alerts-worker"):
        assert any(selects(s, labels[client]) for s in kafka_peers), client


def test_ingress_routes_the_two_apis_and_not_the_workers(docs: Docs) -> None:
    ingress = of_kind(docs, "Ingress")["telemetry"]
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"ingestion-api", "dashboard-api"}


def test_grafana_dashboard_ships_as_a_configmap(docs: Docs) -> None:
    config_map = of_kind(docs, "ConfigMap")["telemetry-grafana-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (K8S / "base" / "monitoring" / "dashboards" / "telemetry.json").read_text()
    assert json.loads(config_map["data"]["telemetry.json"]) == json.loads(committed)
