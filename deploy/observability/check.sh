#!/usr/bin/env bash
# The observability checks (deploy/check.sh runs them; run from anywhere, as root):
#   1. promtool check rules and promtool test rules (rules.test.yml: every alert firing and not
#      firing, with the real thresholds and `for:` durations);
#   2. the PrometheusRule of deploy/k8s/components/monitoring is what rules.yml makes;
#   3. the PodMonitor and PrometheusRule rendered by deploy/check.sh are valid against the
#      Prometheus Operator's CRD schemas (kubernetes-validate knows only built-in kinds);
#   4. e2e.py: a real Prometheus scraping the real gateway in front of the simulator, each fault
#      firing its alert and resolving, every rule and panel naming metrics the gateway exposes,
#      every panel returning a series, and promtool check metrics on a real scrape.
# Prometheus and promtool come from Debian's `prometheus` package (apt-get when missing; no
# service is started: e2e.py runs Prometheus itself on loopback), the Python packages from
# deploy/requirements.txt (deploy/check.sh's virtualenv, on PATH), the CRD schemas from npm
# (deploy/observability/crds, pinned by its package-lock.json).
#
#   bash deploy/observability/check.sh RENDERED_DIR
# where RENDERED_DIR holds manifests rendered with components/monitoring (deploy/check.sh passes
# its own).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
rendered="${1:?usage: check.sh RENDERED_DIR}"
step() { printf '\n--> observability: %s\n' "$*"; }

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    step "apt-get install prometheus (promtool and Prometheus)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version 2>&1 | head -1

step "promtool check rules"
promtool check rules deploy/observability/rules.yml

step "promtool test rules (every alert, firing and not firing)"
(cd deploy/observability && promtool test rules rules.test.yml)

step "the PrometheusRule is what rules.yml makes"
python deploy/observability/prometheusrule.py --check

step "PodMonitor and PrometheusRule against the Prometheus Operator's CRD schemas"
(cd deploy/observability/crds && npm ci --no-audit --no-fund --loglevel=error)
python - "$rendered" >"$repo/target/observability-crs.json" <<'PY'
import json, pathlib, sys, yaml
objects = [
    doc
    for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc["apiVersion"].startswith("monitoring.coreos.com/")
]
if not objects:
    sys.exit("no monitoring.coreos.com objects in the rendered manifests")
# Each PodMonitor selects, in its own file, a pod template with the port it scrapes.
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        pods = [
            d["spec"]["template"] for d in docs
            if d["kind"] == "Deployment"
            and wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        scraped = [
            c["name"] for pod in pods
            for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
            if ports & {p.get("name") for p in c.get("ports", [])}
        ]
        if scraped != ["printjob-gateway"]:
            sys.exit(f"{path.name}: the PodMonitor scrapes {scraped}, not the gateway container")
        print(f"{path.name}: the PodMonitor selects the gateway container's {sorted(ports)} port", file=sys.stderr)
json.dump(objects, sys.stdout)
PY
node deploy/observability/crds/validate.mjs <"$repo/target/observability-crs.json"

step "end to end: Prometheus, the gateway and the simulator"
cargo build --locked --quiet
python deploy/observability/e2e.py --gateway "${CARGO_TARGET_DIR:-$repo/target}/debug/printjob-gateway"
