// Validates KEDA and Prometheus Operator resources against their CRDs' schemas,
// as published on npm by kubernetes-models (generated from the upstream CRDs).
// Reads a JSON array of resources on stdin; prints one JSON line per resource
// it knows: {"kind", "name", "errors"}; resources of other groups are skipped.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = [ScaledObject, PodMonitor, PrometheusRule, ServiceMonitor];

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const resources = JSON.parse(Buffer.concat(chunks).toString("utf8"));
for (const resource of resources) {
  const model = models.find((m) => m.apiVersion === resource.apiVersion && m.kind === resource.kind);
  if (!model) continue;
  let errors = [];
  try {
    new model(resource).validate();
  } catch (err) {
    errors = [String(err.message ?? err)];
  }
  console.log(JSON.stringify({ kind: resource.kind, name: resource.metadata?.name, errors }));
}
