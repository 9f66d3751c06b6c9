#!/usr/bin/env bash
# Interop tests: clients that nobody here wrote (grpcurl 1.8.6, Python grpcio, Node grpc-js, and
# grpc-java on the overlays that listen on TCP), and the "Calling it" snippets of docs/calling.md run exactly as
# printed, against the real release binary in front of the project's own Graph simulator, listening
# exactly as each Kubernetes overlay configures it. Then the --demo mode end to end, on TCP and on a
# Unix socket, with the grpcurl commands it prints, and with --token-exchange obo. CI runs this after `cargo test`;
# run it from anywhere: `bash tests/interop/run.sh`.
#
# The overlays: every deploy/k8s/overlays/* is rendered with `kubectl kustomize`, and overlay.py reads
# from the rendered manifests the gateway container's environment (its ConfigMap) and the target the
# app dials (its PRINTJOB_GATEWAY_TARGET; for the shared overlay, the Service's DNS name). The gateway
# then runs with that environment (only the Graph URL points at the simulator) and each client dials
# that target with the options docs/calling.md gives for its listener kind, and nothing more. Two stand-ins,
# as in a pod: the run happens in network and mount namespaces of its own, so 127.0.0.1:50051 and
# 0.0.0.0:9090 are free and the Service's name can resolve to loopback (/etc/hosts, bind-mounted);
# and a volume (the socket's emptyDir, the TLS Secret) is a directory, the same one for every
# container that mounts it. Needs root, or unprivileged user namespaces (then it maps itself to root).
#
# Everything is installed by package name into tests/interop/.venv and tests/interop/node/node_modules
# (pinned: requirements.txt, node/package-lock.json), never globally, except grpc-java and a JDK,
# which come from Debian (apt-get, as root, when missing); a failed install fails the run.
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

mode=outside
[ "${1:-}" != "--inside" ] || mode=inside
volumes=""

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
    # The logs are printed inside the namespaces, where the processes ran; the volumes removed outside.
    if [ "$status" -ne 0 ] && [ "$mode" = inside ] && [ -d "$work" ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] || continue
            printf '\n--- %s (last 40 lines) ---\n' "${log#"$repo"/}" >&2
            tail -n 40 "$log" >&2
        done
    fi
    if [ "$mode" = outside ] && [ -n "$volumes" ]; then
        rm -rf "$volumes"
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

# Saves what the simulated Graph at $1 (its /__requests URL) received into $2, for the contract check
# (.ci/run: tests/contract/check.py requests tests/interop/work/graph-requests*.json).
save_graph_requests() {
    "$venv/bin/python" -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer, open(sys.argv[2], "wb") as out:
    out.write(answer.read())' "$1" "$2"
}

# Reads field $2 of the JSON log line $1.
json_field() {
    "$venv/bin/python" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# grpc-java for OverlayProbe.java: Debian's libgrpc-java (1.41.3; Maven Central is out of reach here)
# and the jars it runs on, from /usr/share/java; the JDK from Debian too.
java_apt=(openjdk-17-jdk-headless libgrpc-java libnetty-java libperfmark-java libguava-java)
java_jars=(grpc-api grpc-core grpc-context grpc-netty grpc-stub guava perfmark-api netty-buffer netty-codec
    netty-codec-http netty-codec-http2 netty-codec-socks netty-common netty-handler netty-handler-proxy
    netty-resolver netty-transport)
java_classpath() {
    local jar classpath="$work/java"
    for jar in "${java_jars[@]}"; do
        classpath+=":/usr/share/java/$jar.jar"
    done
    printf '%s\n' "$classpath"
}

# Field $2 of overlay $1's description (work/overlays/$1.json, written by overlay.py); "" for null.
overlay_field() {
    "$venv/bin/python" -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print("" if v is None else v)' \
        "$work/overlays/$1.json" "$2"
}

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

# ---------------------------------------------------------------------------------------------
# Outside the namespaces: build, install, render the overlays.
outside() {
    say "cargo build --release --locked"
    cargo build --release --locked
    [ -x "$bin" ] || fail "no binary at $bin"

    say "Python clients: grpcurl, grpcio, grpcio-status, grpcio-tools, pytest, PyYAML, kubectl into ${venv#"$repo"/}"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv \
        -r "$interop/requirements.txt"
    export PATH="$venv/bin:$PATH"
    [ "$(command -v grpcurl)" = "$venv/bin/grpcurl" ] || fail "grpcurl is not the virtualenv's"
    grpcurl -version 2>&1 | grep -qx 'grpcurl v1.8.6' || fail "expected grpcurl v1.8.6, got: $(grpcurl -version 2>&1)"
    [ "$(command -v kubectl)" = "$venv/bin/kubectl" ] || fail "kubectl is not the virtualenv's"

    say "Node clients: @grpc/grpc-js, @grpc/proto-loader, protobufjs (npm ci)"
    (cd "$interop/node" && npm ci --no-audit --no-fund --loglevel=error)

    local need_apt=() jar
    command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
    command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
    command -v javac >/dev/null 2>&1 || need_apt+=("${java_apt[@]}")
    for jar in "${java_jars[@]}"; do
        [ -e "/usr/share/java/$jar.jar" ] || { need_apt+=("${java_apt[@]}") && break; }
    done
    if [ "${#need_apt[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || fail "install ${need_apt[*]} (Debian package names)"
        say "installing ${need_apt[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi

    rm -rf "$work"
    mkdir -p "$work/overlays" "$work/java"
    say "Java client: grpc-java $(dpkg-query -W -f '${Version}' libgrpc-java) (Debian), javac OverlayProbe.java"
    javac -nowarn -cp "$(java_classpath)" -d "$work/java" "$interop/java/OverlayProbe.java"
    # The volumes live under a short path: a Unix socket's path must fit in 107 bytes.
    volumes="$(mktemp -d /tmp/printjob-gateway-interop.XXXXXX)"
    chmod 0755 "$volumes"

    say "render every overlay (kubectl kustomize) and read the gateway's settings and the app's target"
    local dir name
    for dir in "$repo"/deploy/k8s/overlays/*/; do
        name="$(basename "$dir")"
        if [[ "$name" == sidecar-workload-identity* ]]; then
            # The sidecar overlay plus an on-behalf-of credential that only a cluster's workload
            # identity provides; it must listen exactly as the sidecar does, which is checked here.
            # The exchange itself runs in the demo_obo suite and in tests/it.
            kubectl kustomize "$dir" >"$work/$name.yaml"
            grep -qE 'PRINTJOB_GATEWAY_LISTEN: "?127\.0\.0\.1:50051"?$' "$work/$name.yaml" \
                || fail "$name does not listen where the sidecar overlay does"
            printf '%-20s listens as overlays/sidecar does (its exchange needs a cluster)\n' "$name"
            continue
        fi
        kubectl kustomize "$dir" >"$work/overlays/$name.yaml"
        "$venv/bin/python" "$interop/overlay.py" "$work/overlays/$name.yaml" "$volumes/$name" >"$work/overlays/$name.json"
        printf '%-20s %-4s the app dials %s\n' "$name" "$(overlay_field "$name" kind)" "$(overlay_field "$name" target)"
    done
    [ -e "$work/overlays/sidecar.json" ] || fail "no overlays/sidecar, where the behaviour suites run"

    # The user namespace only where root is not available; the script runs as root inside either way.
    local userns=()
    [ "$(id -u)" -eq 0 ] || userns=(--user --map-root-user)
    say "entering new network and mount namespaces (the pod)"
    local rc=0
    export INTEROP_VOLUMES="$volumes"
    unshare "${userns[@]}" --net --mount --fork --kill-child -- bash "$interop/run.sh" --inside || rc=$?
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Inside the namespaces: the pod's loopback, the simulator, a gateway per overlay, the clients.

# Issues the shared overlay's Secret (kubernetes.io/tls: tls.crt, tls.key) into the volume directory $1
# for host name $2, from a throwaway CA whose certificate the clients are given ($work/tls/ca.crt).
issue_tls_secret() {
    local dir="$1" host="$2" ca="$work/tls"
    mkdir -p "$dir" "$ca"
    if [ ! -e "$ca/ca.crt" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=printjob-gateway interop CA" -keyout "$ca/ca.key" -out "$ca/ca.crt" 2>/dev/null
    fi
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
        -keyout "$dir/tls.key" -out "$ca/$host.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' "$host" \
        >"$ca/$host.ext"
    openssl x509 -req -in "$ca/$host.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial -days 2 \
        -extfile "$ca/$host.ext" -out "$dir/tls.crt" 2>/dev/null
}

# Starts the gateway of overlay $1 with the environment its manifests give it (and the simulated
# Graph), waits until it serves; sets gateway_pid and ADMIN.
gateway_pid=""
start_gateway() {
    local name="$1" environment log="$work/gateway-$1.log" line server_name volume secret
    server_name="$(overlay_field "$name" server_name)"
    # Each volume the gateway mounts: a directory; a TLS Secret gets its files.
    while IFS=$'\t' read -r volume secret; do
        mkdir -p "$volume"
        if [ -n "$secret" ]; then
            [ -n "$server_name" ] || fail "$name mounts Secret $secret but has no TLS server name"
            issue_tls_secret "$volume" "$server_name"
        fi
    done < <("$venv/bin/python" -c 'import json, sys
for v in json.load(open(sys.argv[1]))["volumes"].values(): print(v["dir"], v["secret"] or "", sep="\t")' \
        "$work/overlays/$name.json")
    mapfile -t environment < <("$venv/bin/python" -c 'import json, sys
for key, value in json.load(open(sys.argv[1]))["env"].items(): print(f"{key}={value}")' "$work/overlays/$name.json")
    # Only what the kubelet would set, as env -i: nothing from this shell leaks in.
    env -i PATH=/usr/bin:/bin "${environment[@]}" PRINTJOB_GATEWAY_GRAPH_URL="$SIMULATOR_URL" \
        "$bin" >"$log" 2>&1 &
    gateway_pid=$!
    pids+=("$gateway_pid")
    line="$(wait_for_line "$log" '"message":"printjob-gateway serving"' "$gateway_pid")"
    ADMIN="$(json_field "$line" admin)"
    echo "$name: the gateway serves $(json_field "$line" grpc) (admin $ADMIN)"
}

# SIGTERM to the gateway; it must exit 0.
stop_gateway() {
    local rc=0
    kill -TERM "$gateway_pid"
    wait "$gateway_pid" || rc=$?
    forget "$gateway_pid"
    [ "$rc" -eq 0 ] || fail "the gateway exited $rc on SIGTERM"
}

inside() {
    export PATH="$venv/bin:$PATH"
    ip link set lo up
    local name

    # The pod's /etc/hosts, plus each TLS overlay's Service name on this loopback (in a cluster the
    # name resolves to the Service's IP, which leads to the gateway's 0.0.0.0:50051).
    cp /etc/hosts "$work/hosts"
    for name in $(cd "$work/overlays" && ls -- *.json | sed 's/\.json$//'); do
        local host
        host="$(overlay_field "$name" server_name)"
        [ -z "$host" ] || printf '127.0.0.1\t%s\n' "$host" >>"$work/hosts"
    done
    mount --bind "$work/hosts" /etc/hosts

    say "start the Graph simulator"
    "$bin" simulate --listen 127.0.0.1:0 --log-format json --log-filter info >"$work/simulator.log" 2>&1 &
    pids+=($!)
    local line
    line="$(wait_for_line "$work/simulator.log" '"message":"simulated Graph serving"' "${pids[-1]}")"
    SIMULATOR_URL="$(json_field "$line" url)"
    export SIMULATOR_URL
    echo "simulated Graph: $SIMULATOR_URL"

    # Every overlay, the sidecar first: the behaviour suites run against it (the overlay to copy).
    local overlays=(sidecar)
    for name in $(cd "$work/overlays" && ls -- *.json | sed 's/\.json$//'); do
        [ "$name" = sidecar ] || overlays+=("$name")
    done
    local kind
    for name in "${overlays[@]}"; do
        say "overlay $name"
        start_gateway "$name"
        kind="$(overlay_field "$name" kind)"
        OVERLAY="$name"
        OVERLAY_KIND="$kind"
        PRINTJOB_GATEWAY_TARGET="$(overlay_field "$name" target)"
        OVERLAY_MANIFEST_TARGET="$(overlay_field "$name" manifest_target)"
        TLS_CA=""
        [ "$kind" != tls ] || TLS_CA="$work/tls/ca.crt"
        export OVERLAY OVERLAY_KIND PRINTJOB_GATEWAY_TARGET OVERLAY_MANIFEST_TARGET TLS_CA ADMIN
        echo "$name: clients dial $PRINTJOB_GATEWAY_TARGET ($kind)"

        # Each suite is bounded: every call in it has a deadline, and the whole suite has this one.
        run_suite "$name: grpcurl and Python grpcio with the docs' options for $kind (pytest)" \
            timeout 120 "$venv/bin/python" -m pytest -p no:cacheprovider -v "$interop/python/test_overlay.py"
        run_suite "$name: Node grpc-js with the docs' options for $kind (node --test)" \
            timeout 120 node --test "$interop/node/overlay.test.js"
        # Debian's grpc-java 1.41 has no `unix:` resolver (1.47 added it) and its netty no epoll
        # library; its TLS is not exercised here: Java runs where docs/calling.md says it needs nothing.
        if [ "$kind" = tcp ]; then
            run_suite "$name: grpc-java with the docs' options for tcp (java OverlayProbe)" \
                timeout 120 java -cp "$(java_classpath)" OverlayProbe "$PRINTJOB_GATEWAY_TARGET"
        fi
        if [ "$name" = sidecar ]; then
            export GATEWAY="$PRINTJOB_GATEWAY_TARGET"
            run_suite "$name: grpcurl, Python grpcio and the docs/calling.md snippets (pytest)" \
                timeout 300 "$venv/bin/python" -m pytest -p no:cacheprovider -v "$interop/python" \
                --ignore "$interop/python/test_overlay.py"
            run_suite "$name: Node grpc-js (node --test)" \
                timeout 300 node --test "$interop/node/interop.test.js"
        fi
        stop_gateway
    done
    # Every request the gateways sent to the simulated Graph, for the contract check.
    save_graph_requests "${SIMULATOR_URL%/v1.0}/__requests" "$work/graph-requests.json"

    run_suite "the --demo mode end to end, with the grpcurl commands it prints" demo 127.0.0.1:0 tcp
    run_suite "the --demo mode on a Unix socket, with the grpcurl commands it prints" \
        demo "unix:$INTEROP_VOLUMES/demo.sock" unix
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
}

# The demo listening on $1 (a TCP address or unix:PATH); its log is $work/demo-$2.log.
demo() {
    local log="$work/demo-$2.log" pid commands expected
    "$bin" --demo --listen "$1" --admin-listen 127.0.0.1:0 --log-filter info >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_for_line "$log" "printjob-gateway serving" "$pid" >/dev/null
    mapfile -t commands < <(grep -E '^  grpcurl ' "$log" | sed 's/^  //')
    if [ "${#commands[@]}" -ne 3 ]; then
        echo "expected three grpcurl commands in the demo's output, found ${#commands[@]}:"
        cat "$log"
        return 1
    fi
    printf 'demo printed:\n'
    printf '  %s\n' "${commands[@]}"

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
    # A cancel through a printer share, as the first command with share_id: share-1 shares printer-1,
    # whose job 2 is pending: canceled, then already canceled (Graph refuses, the read through the
    # share finds it canceled).
    local share_command
    share_command="$(sed -E 's/"printer_id":"printer-1","print_job_id":"[0-9]+"/"share_id":"share-1","print_job_id":"2"/; s/grpcurl -plaintext/grpcurl -plaintext -emit-defaults/' <<<"${commands[0]}")"
    for expected in '{"alreadyCanceled":false}' '{"alreadyCanceled":true}'; do
        rc=0
        out="$(bash -c "$share_command" 2>&1)" || rc=$?
        printf '%s\n' "$out"
        if [ "$rc" -ne 0 ] || [ "$(tr -d ' \n' <<<"$out")" != "$expected" ]; then
            echo "the cancel through share-1 ($share_command): expected exit 0 and $expected, got exit $rc"
            return 1
        fi
    done
    # The third names a tenant that the simulated Graph throttles for 5 s from its first call: run
    # three times at once, as the demo suggests, every call answers OK once the window has ended (the
    # gateway's default deadline, 10 s, outlasts it), the log shows the window with that tenant, and
    # /metrics counts it.
    local tries=() codes=() i throttled_tenant admin
    for i in 0 1 2; do
        bash -c "${commands[2]}" >"$work/demo-$2-throttled-$i.out" 2>&1 &
        tries+=($!)
    done
    for i in 0 1 2; do
        rc=0
        wait "${tries[$i]}" || rc=$?
        codes+=("$rc")
    done
    for i in 0 1 2; do
        out="$(cat "$work/demo-$2-throttled-$i.out")"
        printf '%s\n' "$out"
        if [ "${codes[$i]}" -ne 0 ] || [ "$(tr -d ' \n' <<<"$out")" != "{}" ]; then
            echo "the demo's third command, run three times at once: expected exit 0 and {} from each, got exit ${codes[$i]}"
            return 1
        fi
    done
    # The tenant (tid) of the command's token, a JWT: the window must be that tenant's.
    throttled_tenant="$("$venv/bin/python" -c 'import base64, json, re, sys
token = re.search(r"Bearer ([^ \x27]+)", sys.argv[1]).group(1)
payload = token.split(".")[1]
print(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["tid"])' "${commands[2]}")"
    if ! grep -F 'Graph is throttling this tenant and app' "$log" | grep -qF "tenant=$throttled_tenant"; then
        echo "the demo's log shows no throttle window for tenant $throttled_tenant:"
        cat "$log"
        return 1
    fi
    admin="$(grep -o 'printjob-gateway serving.* admin=[0-9.:]*' "$log" | sed 's/.* admin=//')"
    if ! "$venv/bin/python" -c 'import sys, urllib.request
metrics = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
windows = [float(l.split()[1]) for l in metrics.splitlines() if l.startswith("printjob_gateway_graph_throttle_windows_total ")]
assert windows and windows[0] >= 1, f"printjob_gateway_graph_throttle_windows_total: {windows}"
print(f"the gateway opened {windows[0]:.0f} throttle window(s)")' "$admin"; then
        echo "the demo's /metrics at $admin counts no throttle window"
        return 1
    fi
    save_graph_requests "$(grep -o 'http://[0-9.:]*/__requests' "$log" | head -1)" "$work/graph-requests-demo-$2.json"
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
    save_graph_requests "$requests" "$work/graph-requests-demo-obo.json"
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    forget "$pid"
    if [ "$rc" -ne 0 ]; then
        echo "the demo exited $rc on SIGTERM"
        return 1
    fi
}

if [ "${1:-}" = "--inside" ]; then
    inside
else
    outside
fi
