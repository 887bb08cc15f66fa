#!/usr/bin/env bash
# The previous release of vpc-cni, for the upgrade and rollback test
# (tests/tests/k8s_upgrade.rs): its source (git archive of PREV_RELEASE from
# this clone's history), its binaries (a debug build sharing this clone's
# target/ for the dependencies), its image (tagged localhost/vpc-cni:dev, as
# its own deploy/ names it) and its deploy/, cached outside the clone:
#
#   ${VPC_CNI_RELEASE_CACHE:-~/.cache/vpc-cni/releases}/<commit>/{bin,deploy,vpc-cni-image.tar}
#
#   scripts/prev-release.sh            build what is missing, print the directory last
#   scripts/prev-release.sh --print    print the directory only
#
# PREV_RELEASE is the release before this one: when a release is made,
# this line moves to it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# main of 2026-12-05 01:02 UTC.
PREV_RELEASE="a3ecee8861aa6953354c08b735c06707aad673c0"
CACHE="${VPC_CNI_RELEASE_CACHE:-$HOME/.cache/vpc-cni/releases}/$PREV_RELEASE"

if [ "${1:-}" = "--print" ]; then
    echo "$CACHE"
    exit 0
fi
if [ -s "$CACHE/vpc-cni-image.tar" ] && [ -x "$CACHE/bin/vpc-cni-agent" ] && [ -s "$CACHE/deploy/10-daemonset.yaml" ]; then
    echo "==> prev-release: ${PREV_RELEASE:0:12} cached ($CACHE)"
    echo "$CACHE"
    exit 0
fi
if ! git -C "$ROOT" cat-file -e "$PREV_RELEASE^{commit}" 2>/dev/null; then
    echo "prev-release: commit $PREV_RELEASE is not in this clone's history (a shallow clone?): git fetch --unshallow" >&2
    exit 1
fi
start=$(date +%s)
echo "==> prev-release: building ${PREV_RELEASE:0:12} (debug, dependencies shared with target/)"
rm -rf "$CACHE"
mkdir -p "$CACHE/bin"
src="$CACHE/src"
mkdir -p "$src"
git -C "$ROOT" archive "$PREV_RELEASE" | tar -x -C "$src"
# The same target directory: the dependencies are built once for both
# releases. The release's binaries are uplifted over this clone's in
# target/debug; the next `cargo build` of this clone puts its own back.
(cd "$src" && cargo build --quiet -p node-agent -p cni-plugin --bins --target-dir "$ROOT/target")
cp "$ROOT/target/debug/vpc-cni-agent" "$ROOT/target/debug/vpc-cni" "$CACHE/bin/"
cp -r "$src/deploy" "$CACHE/deploy"
VPC_CNI_IMAGE="localhost/vpc-cni:dev" bash "$src/scripts/vpc-cni-image.sh" "$CACHE/bin" "$CACHE/vpc-cni-image.tar" >/dev/null
rm -rf "$src"
# The release's workspace crates went into target/debug under the names
# and hashes of this clone's, and newer than this clone's sources, so cargo
# would take them as fresh (this clone's node-agent then failed to build
# against the release's proto): their debug artifacts go and are built
# again from this clone; the registry's crates stay shared.
members=$(sed -n 's/^members = \[\(.*\)\]/\1/p' "$ROOT/Cargo.toml" | tr -d '",')
for m in $members; do
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$ROOT/$m/Cargo.toml" | head -1)
    (cd "$ROOT" && cargo clean --quiet --profile dev -p "$name")
done
# This clone's binaries back in target/debug.
(cd "$ROOT" && cargo build --quiet -p node-agent -p cni-plugin --bins)
echo "==> prev-release: built in $(( $(date +%s) - start ))s"
echo "$CACHE"
