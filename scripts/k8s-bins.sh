#!/usr/bin/env bash
# Build the pinned Kubernetes binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, kube-proxy, CoreDNS, the e2e suite and agnhost) and
# the tools the suite runs on them (helm for the chart, promtool for the metrics) from
# the upstream Go modules, through the Go module proxy, into a cache outside the clone
# keyed by the Kubernetes version (after changing HELM_VERSION or PROMTOOL_VERSION,
# remove the cached binary to have it built again):
#
#   ${VPC_CNI_K8S_CACHE:-~/.cache/vpc-cni/k8s}/<k8s version>/bin
#
# Each binary is built only when missing. The wrapper modules with their go.sum are in
# tools/ (k8s, etcd, coredns, e2e, helm, promtool), so a build is reproducible. Prints how long each build took.
#
#   scripts/k8s-bins.sh            build what is missing, print the bin directory last
#   scripts/k8s-bins.sh --print    print the bin directory only (no build)
#   K8S_BINS="kubelet kubectl" scripts/k8s-bins.sh   build only these

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="v1.34.4"
ETCD_VERSION="v3.6.16"
COREDNS_VERSION="v1.12.1"
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

HELM_VERSION="v4.3.2"
# The Go module version of Prometheus 3.16.0 (tools/promtool): the metrics test's promtool.
PROMTOOL_VERSION="v0.316.0"
ALL="etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy coredns e2e.test agnhost helm promtool"
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
        coredns) dir="$ROOT/tools/coredns"; pkg="github.com/coredns/coredns" ;;
        helm) dir="$ROOT/tools/helm"; pkg="helm.sh/helm/v4/cmd/helm" ;;
        promtool) dir="$ROOT/tools/promtool"; pkg="github.com/prometheus/prometheus/cmd/promtool" ;;
        agnhost) dir="$ROOT/tools/e2e"; pkg="k8s.io/kubernetes/test/images/agnhost" ;;
        e2e.test) dir="$ROOT/tools/e2e"; pkg="." ;;
        kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl|kube-proxy)
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
    case "$name" in
        etcd) ;;
        coredns) ldflags="$ldflags -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" ;;
        helm) ldflags="$ldflags -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" ;;
        promtool) ldflags="$ldflags -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION" ;;
        *) ldflags="$ldflags $LDX" ;;
    esac
    # e2e.test is the test binary of tools/e2e (upstream's network suites).
    local verb=(build)
    [ "$name" = e2e.test ] && verb=(test -c)
    if ! (cd "$dir" && CGO_ENABLED=0 nice -n "${K8S_NICE:-10}" go "${verb[@]}" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") >"$log" 2>&1; then
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
# The e2e specs name the sandbox image of their release (3.10.1): the same image.
PAUSE_IMAGE="registry.k8s.io/pause:3.10,registry.k8s.io/pause:3.10.1"
BUSYBOX_IMAGE="localhost/busybox:1.35,registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
COREDNS_IMAGE="localhost/coredns:$COREDNS_VERSION"
IMAGES="$CACHE/$K8S_VERSION/images"

# image NAME ROOTFS CONFIG_JSON OUT (scripts/image.sh)
source "$ROOT/scripts/image.sh"

build_images() {
    mkdir -p "$IMAGES"
    local src="$ROOT/images/pause/pause.c" work
    if [ ! -s "$IMAGES/pause.tar" ] || [ "$src" -nt "$IMAGES/pause.tar" ] \
        || [ "$ROOT/scripts/k8s-bins.sh" -nt "$IMAGES/pause.tar" ]; then
        command -v gcc >/dev/null || { echo "k8s-bins: gcc is needed to build the pause image" >&2; exit 1; }
        work="$(mktemp -d)"
        gcc -Os -Wall -Werror -static -o "$work/pause" "$src"
        strip "$work/pause"
        image "$PAUSE_IMAGE" "$work" '{"Entrypoint":["/pause"]}' "$IMAGES/pause.tar"
        rm -rf "$work"
        echo "==> k8s-bins: built image $PAUSE_IMAGE"
    fi
    if [ ! -s "$IMAGES/busybox.tar" ] || [ "$ROOT/scripts/k8s-bins.sh" -nt "$IMAGES/busybox.tar" ]; then
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

# CoreDNS's image: the binary built above, alone, run as the cluster's DNS
# (its Corefile comes from a ConfigMap).
build_coredns_image() {
    [ -x "$BIN/coredns" ] || return 0
    if [ -s "$IMAGES/coredns.tar" ] && [ "$IMAGES/coredns.tar" -nt "$BIN/coredns" ]; then
        return 0
    fi
    local work
    work="$(mktemp -d)"
    cp "$BIN/coredns" "$work/coredns"
    image "$COREDNS_IMAGE" "$work" '{"Entrypoint":["/coredns"]}' "$IMAGES/coredns.tar"
    rm -rf "$work"
    echo "==> k8s-bins: built image $COREDNS_IMAGE"
}

# The images of the e2e network specs, named as test/utils/image/manifest.go
# of the pinned release names them (nothing is pulled): agnhost built from
# its module, with a shell and the tools the specs run in it (busybox's
# applets; Debian's dig, curl, getent and OpenBSD netcat with the libraries
# they load), also
# tagged as jessie-dnsutils (the DNS specs run dig in it); busybox and pause
# under the specs' names.
AGNHOST_IMAGE="registry.k8s.io/e2e-test-images/agnhost:2.56"
E2E_EXTRA_TAGS="registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
build_e2e_images() {
    [ -x "$BIN/agnhost" ] || return 0
    if [ -s "$IMAGES/agnhost.tar" ] && [ "$IMAGES/agnhost.tar" -nt "$BIN/agnhost" ] \
        && [ "$IMAGES/agnhost.tar" -nt "$ROOT/scripts/k8s-bins.sh" ]; then
        return 0
    fi
    local work tool lib
    work="$(mktemp -d)"
    mkdir -p "$work/bin" "$work/usr/bin" "$work/tmp" "$work/etc"
    chmod 1777 "$work/tmp"
    cp "$BIN/agnhost" "$work/agnhost"
    cp /bin/busybox "$work/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -sf busybox "$work/bin/$a"
    done
    # The specs run `nc -v -t -w 2` and `nc -u`: OpenBSD's netcat, not busybox's.
    for tool in /usr/bin/dig /usr/bin/curl /usr/bin/getent /usr/bin/nc.openbsd /bin/dash /usr/bin/ss; do
        if [ ! -x "$tool" ]; then
            echo "k8s-bins: $tool is missing (apt-get install bind9-dnsutils curl libc-bin netcat-openbsd dash iproute2)" >&2
            exit 1
        fi
        cp "$tool" "$work/usr/bin/"
        for lib in $(ldd "$tool" | grep -oE '(/[^ ]+\.so[^ ]*)' | sort -u); do
            mkdir -p "$work$(dirname "$lib")"
            cp -L "$lib" "$work$lib"
        done
    done
    mv "$work/usr/bin/nc.openbsd" "$work/usr/bin/nc"
    # The shell is dash: Debian's static busybox sh runs its own applets
    # before PATH (so `sh -c "nc -v ..."` would get busybox's nc).
    ln -sf ../usr/bin/dash "$work/bin/sh"
    # What upstream's Dockerfile adds beside the binary: porter's TLS
    # certificate and key (from the module), netexec's /uploads, the
    # agnhost-2 link, a user and group the security-context specs name.
    local src
    src="$(cd "$ROOT/tools/e2e" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost"
    cp "$src/porter/localhost.crt" "$src/porter/localhost.key" "$work/"
    mkdir -p "$work/uploads"
    ln -sf agnhost "$work/agnhost-2"
    # getent and glibc's resolver read these.
    printf 'root:x:0:0:root:/:/bin/sh\nuser-defined-in-image:x:1000:1000::/:/bin/sh\n' >"$work/etc/passwd"
    printf 'root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >"$work/etc/group"
    echo 'hosts: files dns' >"$work/etc/nsswitch.conf"
    image "$AGNHOST_IMAGE,$E2E_EXTRA_TAGS" "$work" \
        '{"Entrypoint":["/agnhost"],"Cmd":["pause"],"WorkingDir":"/","Env":["PATH=/usr/bin:/bin"]}' "$IMAGES/agnhost.tar"
    rm -rf "$work"
    echo "==> k8s-bins: built image $AGNHOST_IMAGE (also $E2E_EXTRA_TAGS)"
}

build_images
for name in $WANT; do
    build_one "$name"
done
build_coredns_image
build_e2e_images
echo "$BIN"
