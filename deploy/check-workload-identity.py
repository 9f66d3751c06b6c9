"""Checks what kubernetes-validate and checkov cannot: that the rendered workload identity overlays
wire on-behalf-of as docs/on-behalf-of.md says. Run by deploy/check.sh with the directory of the
rendered overlays (PyYAML comes with checkov in the tools' virtualenv):

    python deploy/check-workload-identity.py target/deploy-rendered

- sidecar-workload-identity (relies on the webhook): the pod runs as the annotated ServiceAccount,
  carries the webhook's label, keeps the credential out of the app container, declares no token
  volume of its own, and the gateway's settings choose `obo`;
- sidecar-workload-identity-no-webhook: no webhook label; a projected token for
  api://AzureADTokenExchange mounted in the gateway container only, where
  AZURE_FEDERATED_TOKEN_FILE points; the client and tenant IDs are the ServiceAccount's.
"""

import pathlib
import sys

import yaml

AUDIENCE = "api://AzureADTokenExchange"
USE = "azure.workload.identity/use"
CLIENT_ID = "azure.workload.identity/client-id"
TENANT_ID = "azure.workload.identity/tenant-id"
SKIP = "azure.workload.identity/skip-containers"


def objects(path):
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def one(items, kind):
    found = [o for o in items if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def overlay(rendered, name):
    """The ServiceAccount, the pod spec and its metadata, the gateway container and its settings."""
    items = objects(rendered / f"{name}.yaml")
    account = one(items, "ServiceAccount")
    template = one(items, "Deployment")["spec"]["template"]
    pod = template["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    gateway = next(c for c in containers if c["name"] == "printjob-gateway")
    settings_name = gateway["envFrom"][0]["configMapRef"]["name"]
    settings = next(
        o["data"] for o in items if o["kind"] == "ConfigMap" and o["metadata"]["name"] == settings_name
    )
    assert pod.get("serviceAccountName") == "printjob-gateway", f"{name}: pod's ServiceAccount"
    assert account["metadata"]["name"] == "printjob-gateway", f"{name}: ServiceAccount name"
    assert account["metadata"]["annotations"].get(CLIENT_ID), f"{name}: no {CLIENT_ID} annotation"
    assert settings.get("PRINTJOB_GATEWAY_TOKEN_EXCHANGE") == "obo", f"{name}: token exchange is not obo"
    return account, template, pod, containers, gateway, settings


def token_volumes(pod):
    return [
        v
        for v in pod.get("volumes", [])
        for source in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    ]


def check_webhook(rendered):
    name = "sidecar-workload-identity"
    _, template, pod, containers, gateway, settings = overlay(rendered, name)
    assert template["metadata"]["labels"].get(USE) == "true", f"{name}: the pod lacks the webhook's label"
    skipped = set((template["metadata"].get("annotations") or {}).get(SKIP, "").split(";"))
    others = {c["name"] for c in containers} - {"printjob-gateway"}
    assert others <= skipped, f"{name}: the webhook would give {others - skipped} the credential"
    assert not token_volumes(pod), f"{name}: a token volume of its own beside the webhook's"
    assert not any(k.startswith("AZURE_") for k in settings), f"{name}: AZURE_* set, the webhook would not"


def check_no_webhook(rendered):
    name = "sidecar-workload-identity-no-webhook"
    account, template, pod, containers, gateway, settings = overlay(rendered, name)
    assert USE not in (template["metadata"].get("labels") or {}), f"{name}: the webhook's label is set"
    volumes = token_volumes(pod)
    assert len(volumes) == 1, f"{name}: expected one projected token, found {len(volumes)}"
    volume = volumes[0]
    source = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == AUDIENCE, f"{name}: token audience {source['audience']}"
    mounts = {c["name"]: m for c in containers for m in c.get("volumeMounts", []) if m["name"] == volume["name"]}
    assert list(mounts) == ["printjob-gateway"], f"{name}: the token is mounted in {list(mounts)}"
    expected_file = f"{mounts['printjob-gateway']['mountPath']}/{source['path']}"
    assert settings.get("AZURE_FEDERATED_TOKEN_FILE") == expected_file, f"{name}: AZURE_FEDERATED_TOKEN_FILE"
    annotations = account["metadata"]["annotations"]
    assert settings.get("AZURE_CLIENT_ID") == annotations[CLIENT_ID], f"{name}: AZURE_CLIENT_ID"
    assert settings.get("AZURE_TENANT_ID") == annotations[TENANT_ID], f"{name}: AZURE_TENANT_ID"


def main():
    rendered = pathlib.Path(sys.argv[1])
    check_webhook(rendered)
    check_no_webhook(rendered)
    print("workload identity: both overlays wire on-behalf-of as documented")


if __name__ == "__main__":
    main()
