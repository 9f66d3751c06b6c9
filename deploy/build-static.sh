#!/usr/bin/env bash
# Builds the static release binary the image ships, and prints its path. deploy/build-image.sh,
# deploy/Dockerfile and `bench/profile.sh --symbol-order` all build it with this script, so that
# its functions have the names that link/symbol-order.txt lists for it: a crate's -C metadata, and
# with it every mangled name, changes with RUSTFLAGS, --target and the release profile (strip
# included). So the binary keeps its symbols here; deploy/rootfs.sh strips the image's copy.
#
#   bash deploy/build-static.sh     CARGO_TARGET_DIR_STATIC: where it builds (default target/static,
#                                   apart from the normal build's cache)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
target_triple=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_STATIC:-$repo/target/static}"

# glibc linked statically; see deploy/Dockerfile for why glibc rather than musl. --target keeps
# +crt-static off the build scripts and proc macros, which run on the build machine.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target_triple" >&2
echo "$CARGO_TARGET_DIR/$target_triple/release/printjob-gateway"
