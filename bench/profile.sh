#!/usr/bin/env bash
# Profiles the forwarded path once: the release gateway under valgrind's callgrind, nginx as the
# upstream, the benchmark's h2load load (16 connections x 8 streams). Prints instructions per
# forwarded and per rejected call, where they go (bench/split.py: self cost by crate or gateway
# module, inclusive cost of each layer, malloc/free calls per call) and the top inclusive costs;
# then, on the native gateway, the syscalls per call (strace -c -f) and perf's cpu-clock split
# between the binary, libc and the kernel, which instruction counts leave out. Annotations, dumps,
# splits and perf data go to target/bench/profile/ (open the dumps with callgrind_annotate or
# kcachegrind).
#
#   bench/profile.sh              5,000 calls of each kind
#   bench/profile.sh --calls N
#   bench/profile.sh --symbol-order   instead: rewrites link/symbol-order.txt, the order lld lays out
#                                     the binary's functions in (bench/order.py), from the functions a
#                                     gateway under callgrind runs, built both as `cargo build
#                                     --release` and as the image's static binary
#                                     (deploy/build-static.sh); after changes that rename many
#                                     functions, then commit the file
#
# Instruction counts do not depend on machine noise: compare two builds with this script.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

"$repo/bench/run.sh" --setup-only
if ! command -v valgrind >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
export PATH="$PATH:/usr/sbin"
ulimit -n 65536 2>/dev/null || true

if [ "${1:-}" = "--symbol-order" ]; then
    static="$(bash "$repo/deploy/build-static.sh")"
    exec "$repo/target/bench-venv/bin/python" "$repo/bench/order.py" \
        --binary "$repo/target/release/printjob-gateway" --binary "$static" \
        --out "$repo/link/symbol-order.txt"
fi

exec "$repo/target/bench-venv/bin/python" "$repo/bench/profile.py" \
    --binary "$repo/target/release/printjob-gateway" \
    --out-dir "$repo/target/bench/profile" \
    "$@"
