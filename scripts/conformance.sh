#!/usr/bin/env bash
# Kubernetes' own network conformance suite on the simulation: every
# `[sig-network]` spec tagged `[Conformance]` (they need no internet), plus
# the `HostPort` specs, from the upstream e2e.test of the pinned release, on
# a fresh `vpc-sim up --kubernetes --nodes 2` per kube-proxy mode (nftables,
# then iptables), with the VPC's source/destination check on. Prints a table
# of spec -> pass/fail with its time per mode, and what the VPC's check
# caught; exits non-zero unless every spec passed in every mode.
#
#   scripts/conformance.sh                      both modes
#   MODES=iptables scripts/conformance.sh       one mode
#   FOCUS='DNS' scripts/conformance.sh          only the specs matching FOCUS too
#   SHARDS=3 scripts/conformance.sh             e2e.test processes side by side (default 3)
#   IP_FAMILY=dual scripts/conformance.sh       a dual-stack cluster (vpc-sim up --ip-family dual),
#                                               the [Feature:IPv6DualStack] specs too
#
# Reports (Ginkgo JSON, the e2e logs, the table) in $OUT (default
# target/conformance). Needs root; builds what is missing like the README's
# commands (the Kubernetes binaries and e2e.test into ~/.cache/vpc-cni/k8s).

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_k8s_apt
need_rust
cd "$ROOT"

bash scripts/k8s-bins.sh >/dev/null
BIN="$(bash scripts/k8s-bins.sh --print)"
echo "==> building (release)"
build_release -p node-agent -p vpc-sim
bash scripts/vpc-cni-image.sh target/release >/dev/null
SIM="$ROOT/target/release/vpc-sim"
OUT="${OUT:-$ROOT/target/conformance}"
MODES="${MODES:-nftables iptables}"
SHARDS="${SHARDS:-3}"
mkdir -p "$OUT"

# Every [sig-network] [Conformance] spec, and HostPort. None is skipped:
# the simulation has what they need (two schedulable nodes, kube-proxy,
# CoreDNS, the e2e images made locally, kubectl exec and logs).
SPECS='\[sig-network\].*\[Conformance\]|\[sig-network\] HostPort'
# Specs Ginkgo lists under the focus but that cannot run here, with the
# reason (none today).
SKIP='^$'
IP_FAMILY="${IP_FAMILY:-ipv4}"
if [ "$IP_FAMILY" = dual ]; then
    SPECS="$SPECS|\[Feature:IPv6DualStack\]"
    # SCTP: the kernel here has no sctp module.
    SKIP='SCTP'
fi

failed=0
for mode in $MODES; do
    state="$(mktemp -d)/sim"
    echo "==> kube-proxy $mode: vpc-sim up --kubernetes --nodes 2 --proxy-mode $mode ($state)"
    if ! "$SIM" up --kubernetes --nodes 2 --proxy-mode "$mode" --e2e-images --ip-family "$IP_FAMILY" --state "$state" \
        >"$OUT/$mode-up.log" 2>&1; then
        tail -n 30 "$OUT/$mode-up.log" >&2
        failed=1
        continue
    fi
    started=$(date +%s)
    pids=()
    for shard in $(seq 1 "$SHARDS"); do
        # Shards by spec: e2e.test alone runs its specs one at a time, so
        # several processes each take every SHARDS-th spec of the list.
        list="$OUT/$mode-$shard.focus"
        "$BIN/e2e.test" --ginkgo.dry-run --ginkgo.no-color --ginkgo.v \
            --ginkgo.focus="$SPECS" --ginkgo.skip="$SKIP" 2>/dev/null \
            | grep -E '^\[sig-network\]' | sed -E 's/ \[sig-network(, [A-Za-z0-9:]+)*\]$//' | sort \
            | awk -v n="$SHARDS" -v s="$shard" 'NR % n == s % n' >"$list"
        [ -s "$list" ] || continue
        focus="$(sed -E 's/[][().*+?^$|\\{}]/\\&/g' "$list" | paste -sd'|')"
        [ -n "${FOCUS:-}" ] && focus="($focus).*($FOCUS)|($FOCUS).*($focus)"
        "$BIN/e2e.test" --kubeconfig "$state/kubeconfig" --kubectl-path "$BIN/kubectl" \
            --provider local --ginkgo.focus "$focus" --ginkgo.no-color --ginkgo.v \
            --ginkgo.timeout 90m --ginkgo.json-report "$OUT/$mode-$shard.json" \
            >"$OUT/$mode-$shard.log" 2>&1 &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    echo "    e2e.test ran $(( $(date +%s) - started )) s"
    reports=("$OUT/$mode"-*.json)
    if ! "$SIM" e2e-report --title "kube-proxy $mode" "${reports[@]}" | tee "$OUT/$mode.md"; then
        failed=1
    fi
    "$SIM" source-check --state "$state" | tee -a "$OUT/$mode.md"
    "$SIM" down --state "$state" >/dev/null
done
exit "$failed"
