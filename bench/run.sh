#!/usr/bin/env bash
# The benchmark of issues 8 and 12, in one command, on a fresh Debian machine:
#
#   bench/run.sh            full run (about two minutes, plus the build; a build that keeps one
#                           connection to a stream-capped Graph adds about a minute); writes the
#                           results section of BENCHMARKS.md
#   bench/run.sh --smoke    a few thousand calls, no 10,000-in-flight step, a light pass over the
#                           Graph-like upstream (TLS, h2, 100 streams per connection, 1 s answers),
#                           under a minute; checks that the harness works and the numbers are sane,
#                           enforces no target, and writes nothing outside target/ (for CI)
#
#   bench/run.sh --peer CMD     also runs another gateway, the command line CMD (shell words) plus
#                               --listen, --admin-listen and --graph-url, in the same rounds, and
#                               shows it beside this one (full or smoke run), e.g. the Go peer:
#                               --peer ../shared/peers/go/gw (built by its build.sh); not needed by CI
#   bench/run.sh --setup-only   install the tools and build, then stop (bench/profile.sh uses it)
#   bench/run.sh --rev REV      benchmark commit REV (git archive, built under target/bench-rev/)
#                               instead of the work tree, e.g. to compare two builds or to leave
#                               uncommitted changes out
#   bench/run.sh --compare REV  only the fast path as to Graph (TLS h2, 204 at once), of commit REV
#                               and of the work tree (or --rev's commit) side by side, rounds
#                               interleaved; prints per-round figures and the spread, and writes
#                               them to target/bench/compare.md (BENCHMARKS.md is not changed)
#
# Other options go to bench/harness.py (`bench/run.sh --help`), such as --calls, --rounds, --out.
# Exit status: 0 done (full run: every target met), 1 the harness failed or a sanity check did not
# hold, 3 full run done but a target missed.
#
# It installs h2load (nghttp2-client), nginx (nginx-light) and openssl (which makes the Graph-like
# upstream's throwaway CA) with apt-get when missing, puts its Python helper's one dependency (h2)
# in a virtualenv under target/, builds the gateway with `cargo build --release --locked`, and
# stops every process it started, also on failure.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

setup_only=false
rev=""
compare=""
args=()
while [ "$#" -gt 0 ]; do
    if [ "$1" = "--rev" ]; then
        rev="${2:?--rev needs a commit}"
        shift 2
        continue
    fi
    if [ "$1" = "--compare" ]; then
        compare="${2:?--compare needs a commit}"
        shift 2
        continue
    fi
    args+=("$1")
    shift
done
set -- "${args[@]+"${args[@]}"}"
for arg in "$@"; do
    if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
        sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
        exec python3 "$repo/bench/harness.py" --help
    fi
    if [ "$arg" = "--setup-only" ]; then
        setup_only=true
    fi
done

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ "${#need_apt[@]}" -gt 0 ]; then
    step "apt-get install ${need_apt[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench/run.sh: ${need_apt[*]} missing, and installing them needs root" >&2
        exit 1
    fi
    apt-get update -qq
    # policy-rc.d or not, the packaged nginx service is not what the benchmark runs.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

venv="$repo/target/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
    step "virtualenv $venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/bench/requirements.txt"

# Release builds of several source trees share one target directory, so that their dependencies are
# built once. Cargo would take the gateway crate built from one tree as fresh for another (its
# artifacts are named by package, not by path), so the crate is cleaned when the tree changes.
shared_target="$repo/target/bench-rev/target"
build_in_shared_target() {
    local manifest="$1" stamp="$shared_target/.printjob-gateway-built-from"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$manifest" ]; then
        cargo clean --release --quiet -p printjob-gateway --manifest-path "$manifest" --target-dir "$shared_target" 2>/dev/null || true
    fi
    cargo build --release --locked --manifest-path "$manifest" --target-dir "$shared_target"
    echo "$manifest" > "$stamp"
}

# Builds commit $1 from a git archive under target/bench-rev/ and sets built_binary (a copy per
# commit, so that two builds can sit side by side) and built_label.
build_rev() {
    local sha tree
    sha="$(git -C "$repo" rev-parse --verify "$1^{commit}")"
    tree="$repo/target/bench-rev/src-$sha"
    if [ ! -f "$tree/Cargo.toml" ]; then
        rm -rf "$tree"
        mkdir -p "$tree"
        git -C "$repo" archive "$sha" | tar -x -C "$tree"
    fi
    step "cargo build --release --locked (commit $sha)"
    build_in_shared_target "$tree/Cargo.toml"
    built_binary="$repo/target/bench-rev/printjob-gateway-$sha"
    cp "$shared_target/release/printjob-gateway" "$built_binary"
    built_label="$(git -C "$repo" describe --always "$sha")"
}

binary="$repo/target/release/printjob-gateway"
label="$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
baseline=()
if [ -n "$compare" ]; then
    build_rev "$compare"
    baseline=(--baseline-binary "$built_binary" --baseline-label "$built_label")
fi
if [ -n "$rev" ]; then
    build_rev "$rev"
    binary="$built_binary"
    label="$built_label"
elif [ -n "$compare" ]; then
    # The work tree beside the baseline, in the same target directory: its dependencies are built once.
    step "cargo build --release --locked (work tree)"
    build_in_shared_target "$repo/Cargo.toml"
    binary="$repo/target/bench-rev/printjob-gateway-worktree"
    cp "$shared_target/release/printjob-gateway" "$binary"
else
    step "cargo build --release --locked"
    cargo build --release --locked
fi
if [ "$setup_only" = true ]; then
    exit 0
fi

# 10,000 calls in flight need 10,000 upstream sockets in the gateway and as many in the simulator
# (over HTTP/1.1), and as many downstream sockets for h2load.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

step "benchmark"
exec "$venv/bin/python" "$repo/bench/harness.py" \
    --binary "$binary" \
    --gateway-label "$label" \
    --repo "$repo" \
    --work-dir "$repo/target/bench" \
    --command-line "bench/run.sh${compare:+ --compare $compare}${rev:+ --rev $label}${*:+ $*}" \
    "${baseline[@]+"${baseline[@]}"}" \
    "$@"
