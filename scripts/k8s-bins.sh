#!/usr/bin/env bash
# Build the pinned Kubernetes binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl) from the upstream Go modules, through the Go module
# proxy, into a cache outside the clone keyed by version:
#
#   ${VPC_CNI_K8S_CACHE:-~/.cache/vpc-cni/k8s}/<k8s version>/bin
#
# Each binary is built only when missing. The wrapper modules with their go.sum are in
# tools/k8s and tools/etcd, so a build is reproducible. Prints how long each build took.
#
#   scripts/k8s-bins.sh            build what is missing, print the bin directory last
#   scripts/k8s-bins.sh --print    print the bin directory only (no build)
#   K8S_BINS="kubelet kubectl" scripts/k8s-bins.sh   build only these

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="v1.34.4"
ETCD_VERSION="v3.6.16"
CACHE="${VPC_CNI_K8S_CACHE:-$HOME/.cache/vpc-cni/k8s}"
BIN="$CACHE/$K8S_VERSION/bin"

if [ "${1:-}" = "--print" ]; then
    echo "$BIN"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "k8s-bins: the Go toolchain (go 1.26 or newer: etcd v3.6.16 needs it) is not on PATH; it is needed to build Kubernetes $K8S_VERSION" >&2
    exit 1
fi

ALL="etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
WANT="${K8S_BINS:-$ALL}"
mkdir -p "$BIN"
LOGDIR="$CACHE/$K8S_VERSION/logs"
mkdir -p "$LOGDIR"

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
LDX="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
LDX="$LDX -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
LDX="$LDX -X k8s.io/component-base/version.gitTreeState=clean"
LDX="$LDX -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
LDX="$LDX -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
LDX="$LDX -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
LDX="$LDX -X k8s.io/client-go/pkg/version.gitTreeState=clean"

export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local

build_one() {
    local name="$1" dir pkg tmp start secs log
    case "$name" in
        etcd) dir="$ROOT/tools/etcd"; pkg="go.etcd.io/etcd/server/v3" ;;
        kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl)
            dir="$ROOT/tools/k8s"; pkg="k8s.io/kubernetes/cmd/$name" ;;
        *) echo "k8s-bins: unknown component $name" >&2; exit 1 ;;
    esac
    if [ -x "$BIN/$name" ]; then
        echo "==> k8s-bins: $name cached ($BIN/$name)"
        return 0
    fi
    log="$LOGDIR/$name.build.log"
    echo "==> k8s-bins: building $name from $pkg (log: $log)"
    start=$(date +%s)
    tmp="$BIN/.$name.tmp.$$"
    local ldflags="-s -w"
    [ "$name" != etcd ] && ldflags="$ldflags $LDX"
    if ! (cd "$dir" && CGO_ENABLED=0 nice -n "${K8S_NICE:-10}" go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") >"$log" 2>&1; then
        rm -f "$tmp"
        echo "k8s-bins: building $name failed; the last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    mv "$tmp" "$BIN/$name"
    secs=$(( $(date +%s) - start ))
    echo "==> k8s-bins: built $name in ${secs}s" | tee -a "$LOGDIR/times.txt"
}

# The two images pods need, as docker archives `ctr images import` takes: the
# sandbox from images/pause/pause.c, busybox from Debian's busybox-static. No
# image is downloaded. Names are fully qualified so nothing is normalised to a
# registry.
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE="localhost/busybox:1.35"
IMAGES="$CACHE/$K8S_VERSION/images"

# image NAME ROOTFS CONFIG_JSON OUT (scripts/image.sh)
source "$ROOT/scripts/image.sh"

build_images() {
    mkdir -p "$IMAGES"
    local src="$ROOT/images/pause/pause.c" work
    if [ ! -s "$IMAGES/pause.tar" ] || [ "$src" -nt "$IMAGES/pause.tar" ]; then
        command -v gcc >/dev/null || { echo "k8s-bins: gcc is needed to build the pause image" >&2; exit 1; }
        work="$(mktemp -d)"
        gcc -Os -Wall -Werror -static -o "$work/pause" "$src"
        strip "$work/pause"
        image "$PAUSE_IMAGE" "$work" '{"Entrypoint":["/pause"]}' "$IMAGES/pause.tar"
        rm -rf "$work"
        echo "==> k8s-bins: built image $PAUSE_IMAGE"
    fi
    if [ ! -s "$IMAGES/busybox.tar" ]; then
        if [ ! -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then
            echo "k8s-bins: /bin/busybox is missing: apt-get install busybox-static" >&2
            exit 1
        fi
        work="$(mktemp -d)"
        mkdir -p "$work/bin" "$work/tmp" "$work/etc" "$work/www"
        cp /bin/busybox "$work/bin/busybox"
        for a in $("$work/bin/busybox" --list); do
            [ "$a" = busybox ] || ln -sf busybox "$work/bin/$a"
        done
        echo 'root:x:0:0:root:/:/bin/sh' >"$work/etc/passwd"
        echo 'root:x:0:' >"$work/etc/group"
        image "$BUSYBOX_IMAGE" "$work" '{"Cmd":["sh"],"Env":["PATH=/bin"]}' "$IMAGES/busybox.tar"
        rm -rf "$work"
        echo "==> k8s-bins: built image $BUSYBOX_IMAGE"
    fi
}

build_images
for name in $WANT; do
    build_one "$name"
done
echo "$BIN"
