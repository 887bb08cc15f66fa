#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the integration tests
# that run the real binaries (privileged ones too when root), the crash
# test, and the plugin's size and dependency budget.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_apt gcc libc6-dev iproute2 iputils-ping nftables python3 python3-venv
need_rust rustfmt clippy
need_nextest
cd "$ROOT"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> the plugin stays free of tokio and kube"
if cargo tree -p cni-plugin -e normal --prefix none | grep -Eq '^(tokio|kube|k8s-openapi) '; then
    echo "FAIL: cni-plugin depends on tokio or kube" >&2
    exit 1
fi

echo "==> plugin size (release, stripped)"
build_release
size=$(stat -c %s target/release/vpc-cni)
echo "vpc-cni: $size bytes"
[ "$size" -lt $((2 * 1024 * 1024)) ] || { echo "FAIL: vpc-cni is over 2 MiB" >&2; exit 1; }

echo "==> Tencent Cloud's Python SDK, for the emulator's compatibility test"
SDK_VENV="$ROOT/target/sdk-venv"
if ! "$SDK_VENV/bin/python" -c 'import tencentcloud.vpc.v20170312' 2>/dev/null; then
    python3 -m venv "$SDK_VENV"
    "$SDK_VENV/bin/pip" install -q tencentcloud-sdk-python-common==3.1.195 tencentcloud-sdk-python-vpc==3.1.193
fi
export VPC_CNI_SDK_PYTHON="$SDK_VENV/bin/python"

echo "==> Kubernetes binaries and images for the k8s_ tests (built only when missing)"
need_k8s_apt
bash scripts/k8s-bins.sh

echo "==> fuzz targets, briefly, from their seed corpora (scripts/fuzz.sh for a campaign)"
bash scripts/fuzz.sh --smoke

echo "==> the previous release, for the upgrade and rollback test (built only when missing)"
bash scripts/prev-release.sh

echo "==> tests"
cargo build --workspace --bins --quiet
# The image the k8s_ tests install vpc-cni from (vpc-sim would make it too).
bash scripts/vpc-cni-image.sh target/debug
cargo nextest run --workspace --no-fail-fast

# A short churn of static IP moves between two nodes while both agents and
# the API server are killed, with plain pods asking the source node for
# addresses meanwhile (bench/move-churn --rounds 50 is the campaign).
if [ "$(id -u)" = 0 ]; then
    echo "==> a short static IP move churn under crashes"
    VPC_CNI_BIN_DIR="$ROOT/target/debug" "$ROOT/target/debug/move-churn" --rounds 3
fi
