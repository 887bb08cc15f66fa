#!/usr/bin/env bash
# The vpc-cni container image, made locally from built binaries (no docker,
# no registry): a docker archive with one layer holding
#
#   /usr/local/bin/vpc-cni-agent, /usr/local/bin/vpc-cni
#   /usr/lib/cni/portmap                   (Debian's containernetworking-plugins)
#   /etc/vpc-cni/10-vpc-cni.conflist       (conf/10-vpc-cni.conflist)
#   the shared libraries the binaries need and the dynamic loader, from
#   this machine (ldd); the release plugin is static and needs none
#
# portmap is copied to the node by install-cni and runs there, not in the
# image: Debian's links glibc (2.34 or newer on the node), the libraries in
# the image do not help it.
#
# tagged localhost/vpc-cni:dev (VPC_CNI_IMAGE overrides), for
# `ctr -n k8s.io images import` on every node; deploy/ runs it with
# imagePullPolicy: IfNotPresent.
#
#   scripts/vpc-cni-image.sh [BIN_DIR] [OUT]
#     BIN_DIR  where vpc-cni-agent and vpc-cni are (default target/release)
#     OUT      the archive (default BIN_DIR/vpc-cni-image.tar)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/image.sh"
NAME="${VPC_CNI_IMAGE:-localhost/vpc-cni:dev}"
BIN_DIR="${1:-$ROOT/target/release}"
OUT="${2:-$BIN_DIR/vpc-cni-image.tar}"
# The conflist chains the reference portmap plugin (hostPorts); install-cni
# copies it from here into the node's CNI bin directory.
PORTMAP=/usr/lib/cni/portmap

for b in vpc-cni-agent vpc-cni; do
    if [ ! -x "$BIN_DIR/$b" ]; then
        echo "vpc-cni-image: $BIN_DIR/$b is missing (cargo build --release -p node-agent -p cni-plugin)" >&2
        exit 1
    fi
done
if [ ! -x "$PORTMAP" ]; then
    echo "vpc-cni-image: $PORTMAP is missing (apt-get install containernetworking-plugins)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/lib/cni" "$rootfs/etc/vpc-cni" "$rootfs/tmp" "$rootfs/run" "$rootfs/var/lib"
chmod 1777 "$rootfs/tmp"
cp "$BIN_DIR/vpc-cni-agent" "$BIN_DIR/vpc-cni" "$rootfs/usr/local/bin/"
# Debug builds carry hundreds of MiB of debug information: not in the image.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$rootfs/usr/local/bin/vpc-cni-agent" "$rootfs/usr/local/bin/vpc-cni"
fi
cp "$PORTMAP" "$rootfs/usr/lib/cni/portmap"
cp "$ROOT/conf/10-vpc-cni.conflist" "$rootfs/etc/vpc-cni/10-vpc-cni.conflist"
echo 'root:x:0:0:root:/:/usr/sbin/nologin' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
# glibc resolves host names (the VPC API's) with its built-in dns and files
# modules; say which to use.
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
# Every library either binary loads, and the loader, at the paths the
# binaries ask for (copied, not linked, so the layer stands alone).
for lib in $(ldd "$BIN_DIR/vpc-cni-agent" "$BIN_DIR/vpc-cni" 2>/dev/null \
        | grep -oE '(/[^ ]+\.so[^ ]*)' | sort -u); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
image "$NAME" "$rootfs" \
    '{"Entrypoint":["/usr/local/bin/vpc-cni-agent"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]}' "$OUT"
echo "==> vpc-cni-image: $NAME in $OUT ($(du -h "$OUT" | cut -f1))"
