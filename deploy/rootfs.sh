#!/usr/bin/env bash
# Lays out the image's whole root filesystem in OUT_DIR. Both deploy/Dockerfile (final stage) and
# deploy/build-image.sh (umoci, no daemon) call it, so the two images have the same contents:
#
#   /usr/local/bin/printjob-gateway    the static gateway (the ENTRYPOINT), its symbols stripped here
#                                      (1.7 of its 12 MB) rather than by the build: see
#                                      build-static.sh
#   /usr/local/bin/sleep               a static `sleep SECONDS` for preStop hooks (deploy/sleep.rs)
#   /etc/ssl/certs/ca-certificates.crt Debian's CA bundle, where rustls-native-certs (openssl-probe)
#                                      looks first on Debian-like systems
#   /etc/passwd, /etc/group            root and nonroot (65532), as in distroless; no login shell
#   /etc/nsswitch.conf                 `hosts: files dns` for the static glibc resolver
#   /tmp (1777)
#
# Every file is owned by root, so a Dockerfile COPY gives the same tree whatever it does with owners.
#
# There is no shell, no package manager and no libc: the binaries are static.
#
# Usage: rootfs.sh GATEWAY_BINARY SLEEP_BINARY CA_BUNDLE OUT_DIR   (as root, so that root owns it)
set -euo pipefail

if [ "$#" -ne 4 ]; then
    echo "usage: $0 GATEWAY_BINARY SLEEP_BINARY CA_BUNDLE OUT_DIR" >&2
    exit 2
fi
gateway="$1" sleep_bin="$2" ca_bundle="$3" out="$4"

for binary in "$gateway" "$sleep_bin"; do
    # A dynamically linked binary would need a loader and a libc that the image does not have.
    if LC_ALL=C readelf --program-headers "$binary" | grep -q 'INTERP'; then
        echo "rootfs.sh: $binary is dynamically linked; build it with -C target-feature=+crt-static" >&2
        exit 1
    fi
done
if [ ! -s "$ca_bundle" ]; then
    echo "rootfs.sh: no CA bundle at $ca_bundle (install Debian's ca-certificates)" >&2
    exit 1
fi

rm -rf "$out"
install -d -m 0755 "$out" "$out/usr" "$out/usr/local" "$out/usr/local/bin" "$out/etc" \
    "$out/etc/ssl" "$out/etc/ssl/certs"
install -s -m 0755 "$gateway" "$out/usr/local/bin/printjob-gateway"
install -m 0755 "$sleep_bin" "$out/usr/local/bin/sleep"
install -m 0644 "$ca_bundle" "$out/etc/ssl/certs/ca-certificates.crt"

# The users of distroless' images, without home directories: the gateway writes nothing.
# /sbin/nologin does not exist here: nobody logs in.
cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
PASSWD
cat >"$out/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
# A statically linked glibc has the files and dns NSS back ends built in (glibc >= 2.34); without
# this file it would try DNS before /etc/hosts.
cat >"$out/etc/nsswitch.conf" <<'NSS'
hosts: files dns
NSS
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"

install -d -m 1777 "$out/tmp"
