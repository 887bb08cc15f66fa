# Shared by demo.sh and test.sh: install what the project needs, idempotently.
# Debian 12, as root (or with sudo available).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt packages, installed only if missing; `apt-get update` runs at most once.
need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

need_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust 1.90 or newer (rustup) first" >&2
        exit 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        for comp in "$@"; do
            rustup component list --installed 2>/dev/null | grep -q "^${comp}" || rustup component add "$comp"
        done
    fi
}

# Release binaries of the packages named (`-p PKG ...`, or `--workspace
# --bins`), and the plugin as a static musl binary: it starts in about
# 0.25 ms instead of 0.4 (static glibc) or 0.9 (dynamic glibc), with no
# dynamic loader to run and no CPU-feature probing, which costs a hundred
# trapped CPUID instructions in a VM (ARCHITECTURE.md, "The plugin starts
# as fast as a process can"). Where the musl target cannot be installed it
# falls back to static glibc.
build_release() {
    [ $# -eq 0 ] || cargo build --release --quiet "$@"
    local musl
    musl="$(uname -m)-unknown-linux-musl"
    if need_rust_target "$musl"; then
        cargo build --release --quiet -p cni-plugin --bin vpc-cni --target "$musl"
        # A copy, not a write through cargo's hard link to its own artifact.
        rm -f "$ROOT/target/release/vpc-cni"
        cp "$ROOT/target/$musl/release/vpc-cni" "$ROOT/target/release/vpc-cni"
    else
        echo "warning: no Rust target $musl: the plugin is linked statically with glibc" >&2
        cargo rustc --release --quiet -p cni-plugin --bin vpc-cni -- -C target-feature=+crt-static
    fi
}

# A Rust target's standard library, added with rustup if missing; fails
# when it is neither there nor installable.
need_rust_target() {
    rustup target list --installed 2>/dev/null | grep -qx "$1" && return 0
    command -v rustup >/dev/null 2>&1 && rustup target add "$1" >/dev/null 2>&1
}

need_nextest() {
    cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
}

# What `vpc-sim up --kubernetes` needs from Debian, the tools
# scripts/k8s-bins.sh copies into the e2e image (dig, curl, getent, OpenBSD
# netcat, dash, ss), and Go to build the Kubernetes binaries.
need_k8s_apt() {
    need_apt gcc libc6-dev iproute2 iputils-ping containerd runc containernetworking-plugins \
        iptables busybox-static openssl util-linux \
        bind9-dnsutils curl libc-bin netcat-openbsd dash
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        export PATH="/usr/local/go/bin:$PATH"
    fi
}
