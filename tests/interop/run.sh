#!/usr/bin/env bash
# Interop tests: clients that nobody here wrote (grpcurl 1.8.6, Python grpcio, Node grpc-js), and the
# README's "Calling it" snippets run exactly as printed, against the real release binary in front of
# the project's own Graph simulator. Then the --demo mode end to end, with the grpcurl commands it
# prints, with and without --token-exchange obo. CI runs this after `cargo test`; run it from
# anywhere: `bash tests/interop/run.sh`.
#
# Everything is installed by package name into tests/interop/.venv and tests/interop/node/node_modules
# (pinned: requirements.txt, node/package-lock.json), never globally; a failed install fails the run.
# Logs of the processes it starts are in tests/interop/work/ (kept after a failure).
set -euo pipefail

interop="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$interop/../.." && pwd)"
cd "$repo"

bin="$repo/target/release/printjob-gateway"
venv="$interop/.venv"
work="$interop/work"
wait_seconds=30

say() { printf '\n--> interop: %s\n' "$*"; }
fail() { printf '\ninterop: FAILED: %s\n' "$*" >&2; exit 1; }

# Every process started here, stopped on any exit.
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        local deadline=$((SECONDS + wait_seconds))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ] && [ -d "$work" ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] || continue
            printf '\n--- %s (last 40 lines) ---\n' "${log#"$repo"/}" >&2
            tail -n 40 "$log" >&2
        done
    fi
    exit "$status"
}
# Drops a process that has been waited for, so that cleanup does not signal a reused PID.
forget() {
    local kept=() pid
    for pid in "${pids[@]}"; do
        [ "$pid" = "$1" ] || kept+=("$pid")
    done
    pids=("${kept[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until $1 (a log file) has a line containing $2, while process $3 lives; prints that line.
wait_for_line() {
    local log="$1" pattern="$2" pid="$3" deadline=$((SECONDS + wait_seconds)) line
    while :; do
        if line="$(grep -m1 -F -- "$pattern" "$log" 2>/dev/null)"; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || fail "process $pid exited before logging '$pattern' (see $log)"
        [ "$SECONDS" -lt "$deadline" ] || fail "no '$pattern' in $log within ${wait_seconds}s"
        sleep 0.1
    done
}

# Reads field $2 of the JSON log line $1.
json_field() {
    "$venv/bin/python" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

say "cargo build --release --locked"
cargo build --release --locked
[ -x "$bin" ] || fail "no binary at $bin"

say "Python clients: grpcurl, grpcio, grpcio-status, grpcio-tools, pytest into ${venv#"$repo"/}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv \
    -r "$interop/requirements.txt"
export PATH="$venv/bin:$PATH"
[ "$(command -v grpcurl)" = "$venv/bin/grpcurl" ] || fail "grpcurl is not the virtualenv's"
grpcurl -version 2>&1 | grep -qx 'grpcurl v1.8.6' || fail "expected grpcurl v1.8.6, got: $(grpcurl -version 2>&1)"

say "Node clients: @grpc/grpc-js, @grpc/proto-loader, protobufjs (npm ci)"
(cd "$interop/node" && npm ci --no-audit --no-fund --loglevel=error)

rm -rf "$work"
mkdir -p "$work"

say "start the Graph simulator and the gateway on free ports"
"$bin" simulate --listen 127.0.0.1:0 --log-format json --log-filter info >"$work/simulator.log" 2>&1 &
pids+=($!)
line="$(wait_for_line "$work/simulator.log" '"message":"simulated Graph serving"' "${pids[-1]}")"
SIMULATOR_URL="$(json_field "$line" url)"

"$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --graph-url "$SIMULATOR_URL" \
    --log-format json --log-filter info >"$work/gateway.log" 2>&1 &
pids+=($!)
line="$(wait_for_line "$work/gateway.log" '"message":"printjob-gateway serving"' "${pids[-1]}")"
GATEWAY="$(json_field "$line" grpc)"
ADMIN="$(json_field "$line" admin)"
export SIMULATOR_URL GATEWAY ADMIN
echo "simulated Graph: $SIMULATOR_URL  gateway: $GATEWAY  admin: $ADMIN"

failed=()
passed=0
run_suite() {
    local name="$1"
    shift
    say "$name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed+=("$name")
    fi
}

# Each suite is bounded: every call in it has a deadline, and the whole suite has this one.
run_suite "grpcurl, Python grpcio and the README snippets (pytest)" \
    timeout 300 "$venv/bin/python" -m pytest -p no:cacheprovider -v "$interop/python"
run_suite "Node grpc-js (node --test)" \
    timeout 300 node --test "$interop/node/"

demo() {
    local log="$work/demo.log" pid commands expected
    "$bin" --demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-filter info >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_for_line "$log" "printjob-gateway serving" "$pid" >/dev/null
    mapfile -t commands < <(grep -E '^  grpcurl ' "$log" | sed 's/^  //')
    if [ "${#commands[@]}" -ne 2 ]; then
        echo "expected two grpcurl commands in the demo's output, found ${#commands[@]}:"
        cat "$log"
        return 1
    fi
    printf 'demo printed:\n  %s\n  %s\n' "${commands[0]}" "${commands[1]}"

    # The first succeeds and prints {} (grpcurl 1.8.6 spreads the empty object over three lines).
    local out rc=0
    out="$(bash -c "${commands[0]}" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || [ "$(tr -d ' \n' <<<"$out")" != "{}" ]; then
        echo "the demo's first command: expected exit 0 and {}, got exit $rc"
        return 1
    fi
    # The second fails with FailedPrecondition: grpcurl exits 64 + 9.
    rc=0
    out="$(bash -c "${commands[1]}" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    expected="$(printf 'ERROR:\n  Code: FailedPrecondition\n  Message: The print job is already completed and cannot be canceled.')"
    if [ "$rc" -ne 73 ] || [ "${out:0:${#expected}}" != "$expected" ] \
        || ! grep -qF '"graphErrorCode":"notAllowed"' <<<"$out" || ! grep -qF '"jobState":"completed"' <<<"$out"; then
        echo "the demo's second command: expected exit 73 and FailedPrecondition with Graph's error and jobState, got exit $rc"
        return 1
    fi
    # It stops cleanly on SIGTERM.
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    forget "$pid"
    if [ "$rc" -ne 0 ]; then
        echo "the demo exited $rc on SIGTERM"
        return 1
    fi
}
run_suite "the --demo mode end to end, with the grpcurl commands it prints" demo

# The same with --token-exchange obo: the simulator's Entra endpoint exchanges the callers' tokens,
# and its Graph takes only the tokens it issued. Four commands: OK, FAILED_PRECONDITION, a claims
# challenge (UNAUTHENTICATED with www-authenticate), missing consent (PERMISSION_DENIED).
demo_obo() {
    local log="$work/demo-obo.log" pid commands out rc requests
    "$bin" --demo --token-exchange obo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --log-filter info >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_for_line "$log" "printjob-gateway serving" "$pid" >/dev/null
    grep -qF "exchanging each caller's token on behalf of its user" "$log" || {
        echo "the demo does not say that it exchanges tokens:"
        cat "$log"
        return 1
    }
    mapfile -t commands < <(grep -E '^  grpcurl ' "$log" | sed 's/^  //')
    if [ "${#commands[@]}" -ne 4 ]; then
        echo "expected four grpcurl commands in the demo's output, found ${#commands[@]}:"
        cat "$log"
        return 1
    fi
    printf 'demo printed:\n'
    printf '  %s\n' "${commands[@]}"

    rc=0
    out="$(bash -c "${commands[0]}" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || [ "$(tr -d ' \n' <<<"$out")" != "{}" ]; then
        echo "the first command: expected exit 0 and {}, got exit $rc"
        return 1
    fi
    rc=0
    out="$(bash -c "${commands[1]}" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 73 ] || ! grep -qF 'Code: FailedPrecondition' <<<"$out"; then
        echo "the second command: expected exit 73 (FailedPrecondition), got exit $rc"
        return 1
    fi
    # UNAUTHENTICATED is 16: exit 80. grpcurl -v prints the trailers, with the claims challenge
    # whose base64 is the claims JSON of the simulator's built-in scenario.
    rc=0
    out="$(bash -c "${commands[2]}" 2>&1)" || rc=$?
    printf '%s\n' "$out" | grep -v '^//'
    local challenge
    challenge="$(grep -m1 '^www-authenticate: ' <<<"$out" || true)"
    if [ "$rc" -ne 80 ] || ! grep -qF 'Code: Unauthenticated' <<<"$out" \
        || ! "$venv/bin/python" -c '
import base64, json, re, sys
claims = re.search(r"error=\"insufficient_claims\", claims=\"([^\"]+)\"", sys.argv[1]).group(1)
assert "polids" in json.loads(base64.b64decode(claims))["access_token"]
' "$challenge"; then
        echo "the third command: expected exit 80, Unauthenticated and a www-authenticate claims challenge, got exit $rc"
        return 1
    fi
    # PERMISSION_DENIED is 7: exit 71, with Entra's code in ErrorInfo.
    rc=0
    out="$(bash -c "${commands[3]}" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 71 ] || ! grep -qF '"reason":"CONSENT_REQUIRED"' <<<"$out" \
        || ! grep -qF '"aadstsCode":"AADSTS65001"' <<<"$out"; then
        echo "the fourth command: expected exit 71, PermissionDenied, CONSENT_REQUIRED and AADSTS65001, got exit $rc"
        return 1
    fi
    # The simulator saw one successful exchange for demo-token (the second call used the cache),
    # Graph received the very token it issued, and no token or secret is in its request log.
    requests="$(grep -o 'http://[0-9.:]*/__requests' "$log" | head -1)"
    "$venv/bin/python" - "$requests" <<'PY' || return 1
import json, sys, urllib.request
log = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
issued = [e["tokenExchange"] for e in log if e.get("tokenExchange") and e["status"] == 200]
assert len(issued) == 1, f"expected one successful exchange, got {issued}"
assert issued[0]["credential"] == "clientSecret" and issued[0]["clientId"] == "demo-client", issued
graph = [e for e in log if e["path"].startswith("/v1.0/")]
assert graph and all(e["bearerTokenSha256"] == issued[0]["issuedTokenSha256"] for e in graph), graph
text = json.dumps(log)
for secret in ("demo-token", "mfa-user-token", "demo-client-secret", "sim-graph-"):
    assert secret not in text, f"{secret} in /__requests"
print(f"the simulator: {len(issued)} exchange, {len(graph)} Graph calls with the issued token")
PY
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    forget "$pid"
    if [ "$rc" -ne 0 ]; then
        echo "the demo exited $rc on SIGTERM"
        return 1
    fi
}
run_suite "the --demo --token-exchange obo mode end to end, with the grpcurl commands it prints" demo_obo

# tests/it/soak.rs at full size against the release binary (cargo test runs it small, on the
# debug binary): 20,000 calls, every one OK, one Graph request each, and flat RSS.
run_suite "soak: 20,000 calls through the release binary" \
    env PRINTJOB_SOAK_CALLS=20000 PRINTJOB_SOAK_BINARY="$bin" \
    timeout 600 cargo test --locked --test it soak::

printf '\ninterop: %d passed, %d failed\n' "$passed" "${#failed[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'interop: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
