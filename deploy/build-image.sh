#!/usr/bin/env bash
# Builds the printjob-gateway image without a container daemon: a static release binary, the root
# filesystem from deploy/rootfs.sh (the same one deploy/Dockerfile's final stage copies), and umoci
# to write it as an OCI image layout. Prints the compressed image size.
#
#   bash deploy/build-image.sh [OUT_LAYOUT]     default: target/image/oci, tagged with the version
#
# Needs: cargo/rustc, umoci and ca-certificates (Debian packages; installed here with apt-get when
# missing), and root (the image's files are owned by root).
# The static build (deploy/build-static.sh) uses its own CARGO_TARGET_DIR (target/static, or
# CARGO_TARGET_DIR_STATIC) so that it leaves the normal build cache alone.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
layout="${1:-$repo/target/image/oci}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
tag="$version"
target_triple=x86_64-unknown-linux-gnu
work="$repo/target/image/work"

if [ "$(id -u)" -ne 0 ]; then
    echo "build-image.sh: run as root (the image's files must be owned by root)" >&2
    exit 1
fi
need_apt=()
command -v umoci >/dev/null 2>&1 || need_apt+=(umoci)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
command -v readelf >/dev/null 2>&1 || need_apt+=(binutils)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "build-image.sh: installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "build-image.sh: static release build (deploy/build-static.sh)"
# With its symbols: deploy/rootfs.sh strips the image's copy (see build-static.sh for why there).
gateway="$(bash deploy/build-static.sh)"
sleep_bin="$(dirname "$gateway")/sleep-helper"
rustc --edition 2021 -C opt-level=s -C panic=abort -C strip=symbols \
    -C target-feature=+crt-static --target "$target_triple" -o "$sleep_bin" deploy/sleep.rs

rm -rf "$work" "$layout"
mkdir -p "$work" "$(dirname "$layout")"
bash deploy/rootfs.sh "$gateway" "$sleep_bin" /etc/ssl/certs/ca-certificates.crt "$work/rootfs"

# An empty image, unpacked to a bundle, filled with the root filesystem, repacked as one layer.
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
cp -a "$work/rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$layout:$tag" --history.created_by "deploy/build-image.sh (deploy/rootfs.sh)" \
    "$work/bundle"

# The same configuration as deploy/Dockerfile's final stage.
umoci config --image "$layout:$tag" \
    --os linux --architecture amd64 \
    --config.user 65532:65532 \
    --config.entrypoint /usr/local/bin/printjob-gateway \
    --config.exposedports 50051/tcp --config.exposedports 9090/tcp \
    --config.workingdir / \
    --config.label org.opencontainers.image.title=printjob-gateway \
    --config.label "org.opencontainers.image.description=A gRPC gateway that cancels Universal Print jobs through Microsoft Graph" \
    --config.label org.opencontainers.image.licenses=Apache-2.0 \
    --config.label "org.opencontainers.image.version=$version" \
    --history.created_by "deploy/build-image.sh (config)"
umoci gc --layout "$layout"
rm -rf "$work"

# The compressed size: what a registry stores and a node pulls (the layer blobs, gzip).
python3 - "$layout" "$tag" <<'PY'
import json, pathlib, sys
layout, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
def blob(digest):
    algo, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algo / hexdigest
index = json.loads((layout / "index.json").read_text())
manifest_desc = next(m for m in index["manifests"]
                     if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
manifest = json.loads(blob(manifest_desc["digest"]).read_text())
compressed = sum(layer["size"] for layer in manifest["layers"])
print(f"build-image.sh: {layout}:{tag}: {len(manifest['layers'])} layer(s), "
      f"compressed {compressed} bytes ({compressed / 1e6:.2f} MB, {compressed / 2**20:.2f} MiB)")
PY
