"""Reads a rendered overlay (`kubectl kustomize deploy/k8s/overlays/NAME`) and prints, as JSON, how
run.sh must start the gateway so that it listens exactly as the overlay configures it, and the target
string a client dials:

    python overlay.py RENDERED.yaml VOLUMES_DIR

- env: the gateway container's environment as the kubelet would give it: the ConfigMap it reads with
  envFrom, then its own `env` entries. Paths under one of the container's volume mounts are moved to
  VOLUMES_DIR/<volume name>/..., which stands for that volume (the one change; run.sh then overrides
  only PRINTJOB_GATEWAY_GRAPH_URL, to point at the simulated Graph).
- kind: "tcp", "unix" or "tls", from PRINTJOB_GATEWAY_LISTEN and PRINTJOB_GATEWAY_TLS_CERT.
- target: what the app container dials: its PRINTJOB_GATEWAY_TARGET (sidecars), with its own volume
  mounts moved the same way, so a socket is found only if both containers mount the same volume; or,
  without an app container (shared), the Service's cluster DNS name and port.
- manifest_target: the target as the manifests write it, before volumes are moved.
- server_name: the host name a TLS client checks the certificate against (TLS only).
- volumes: every volume the gateway mounts, {name: {"dir": ..., "secret": name or null}}.
"""

import json
import pathlib
import sys

import yaml

GATEWAY = "printjob-gateway"
TARGET_VARIABLE = "PRINTJOB_GATEWAY_TARGET"


def fail(message):
    sys.exit(f"overlay.py: {message}")


def the_one(items, what):
    if len(items) != 1:
        fail(f"expected one {what}, found {len(items)}")
    return items[0]


def moved(value, mounts, volumes_dir):
    """`value` with each `<mountPath>/` in it replaced by that volume's directory under volumes_dir."""
    for mount in mounts:
        prefix = mount["mountPath"].rstrip("/") + "/"
        value = value.replace(prefix, f"{volumes_dir / mount['name']}/")
    return value


def main(rendered, volumes_dir):
    objects = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    pods = [o["spec"]["template"]["spec"] for o in by_kind.get("Deployment", [])]
    found = [
        (pod, container)
        for pod in pods
        for container in pod.get("initContainers", []) + pod.get("containers", [])
        if container["name"] == GATEWAY
    ]
    pod, gateway = the_one(found, f"container named {GATEWAY}")

    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    env = {}
    for source in gateway.get("envFrom", []):
        name = source["configMapRef"]["name"]
        if name not in config_maps:
            fail(f"the gateway reads ConfigMap {name}, which the overlay does not render")
        env.update(config_maps[name])
    for entry in gateway.get("env", []):
        env[entry["name"]] = entry["value"]

    gateway_mounts = gateway.get("volumeMounts", [])
    env = {key: moved(value, gateway_mounts, volumes_dir) for key, value in env.items()}
    pod_volumes = {v["name"]: v for v in pod.get("volumes", [])}
    volumes = {}
    for mount in gateway_mounts:
        volume = pod_volumes[mount["name"]]
        secret = volume.get("secret", {}).get("secretName")
        volumes[mount["name"]] = {"dir": str(volumes_dir / mount["name"]), "secret": secret}

    listen = env.get("PRINTJOB_GATEWAY_LISTEN")
    if not listen:
        fail("the gateway's environment has no PRINTJOB_GATEWAY_LISTEN")
    if listen.startswith("unix:"):
        kind = "unix"
    elif env.get("PRINTJOB_GATEWAY_TLS_CERT"):
        kind = "tls"
    else:
        kind = "tcp"

    apps = [c for c in pod.get("containers", []) if c["name"] != GATEWAY]
    server_name = None
    if apps:
        app = the_one(apps, "app container beside the gateway")
        values = [e["value"] for e in app.get("env", []) if e["name"] == TARGET_VARIABLE]
        manifest_target = the_one(values, f"{TARGET_VARIABLE} in the app container")
        target = moved(manifest_target, app.get("volumeMounts", []), volumes_dir)
    else:
        service = the_one(by_kind.get("Service", []), "Service (no app container beside the gateway)")
        port = the_one([p for p in service["spec"]["ports"] if p["name"] == "grpc"], "Service port named grpc")
        server_name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        target = manifest_target = f"{server_name}:{port['port']}"
    if kind == "tls" and server_name is None:
        fail("TLS without a Service: no name to check the certificate against")

    print(
        json.dumps(
            {
                "kind": kind,
                "target": target,
                "manifest_target": manifest_target,
                "server_name": server_name,
                "env": env,
                "volumes": volumes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("usage: overlay.py RENDERED.yaml VOLUMES_DIR")
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).resolve())
