// Validates Prometheus Operator objects (PodMonitor, ServiceMonitor, PrometheusRule) against the
// JSON schemas of the operator's CRDs, which @kubernetes-models/prometheus-operator generates from
// the CRDs: what kubernetes-validate, which knows only built-in kinds and skips these with a
// warning, does for the rest. Reads a JSON array of objects on stdin; exits non-zero naming each
// object that is invalid or of a kind it has no schema for.
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const kinds = {
  "monitoring.coreos.com/v1": { PodMonitor, ServiceMonitor, PrometheusRule },
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  const name = `${object.kind} ${object.metadata?.name}`;
  const Model = kinds[object.apiVersion]?.[object.kind];
  if (!Model) {
    console.error(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
    failed += 1;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${name}: valid against the ${object.apiVersion} CRD schema`);
  } catch (error) {
    console.error(`${name}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
