#!/usr/bin/env bash
# The embedded default: a node agent on a simulated VPC, with pods put
# through the real `vpc-cni` binary exactly as kubelet runs it. Prints each
# pod's IP and ENI and the agent's pool, deletes the pods and checks that
# nothing is left allocated. Exits non-zero if any step fails.
#
# Until the netlink data path lands the agent runs with `--dataplane fake`:
# IPAM, ENIs, the store and the CNI protocol are real; no kernel links are made.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_apt gcc libc6-dev
need_rust
cd "$ROOT"

PODS="${PODS:-4}"
echo "==> building (release)"
cargo build --release --quiet -p cni-plugin -p node-agent
BIN="$ROOT/target/release"

WORK="$(mktemp -d /tmp/vpc-cni-demo.XXXXXX)"
SOCK="$WORK/agent.sock"
AGENT_PID=""
cleanup() {
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; echo "--- agent log ---" >&2; tail -n 30 "$WORK/agent.log" >&2; exit 1; }

echo "==> starting vpc-cni-agent (simulated VPC, fake dataplane) in $WORK"
"$BIN/vpc-cni-agent" run --socket "$SOCK" --state-dir "$WORK/state" --dataplane fake \
    --log-format json 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || fail "agent did not start"

CONF="{\"cniVersion\":\"1.1.0\",\"name\":\"vpc\",\"type\":\"vpc-cni\",\"agentSocket\":\"$SOCK\"}"

cni() { # verb pod [conf]
    local netns="$WORK/netns-$2"
    : >"$netns"
    env -i CNI_COMMAND="$1" CNI_CONTAINERID="ctr-$2" CNI_NETNS="$netns" CNI_IFNAME=eth0 \
        CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" \
        "$BIN/vpc-cni" <<<"${3:-$CONF}"
}

field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

echo "==> STATUS"
env -i CNI_COMMAND=STATUS "$BIN/vpc-cni" <<<"$CONF" || fail "agent not ready"

echo "==> ADD $PODS pods"
printf '%-8s %-16s %-16s %s\n' POD IP HOST-VETH RESULT
declare -A IPS
for i in $(seq "$PODS"); do
    pod="web-$i"
    out="$(cni ADD "$pod")" || fail "ADD $pod: $out"
    ip="$(grep -o '"address":"[^"]*"' <<<"$out" | head -1 | cut -d'"' -f4)"
    veth="$(grep -o '"name":"vpc[^"]*"' <<<"$out" | cut -d'"' -f4)"
    [ -n "$ip" ] || fail "no IP in $out"
    [ -z "${IPS[$ip]:-}" ] || fail "$ip handed out twice"
    IPS[$ip]="$pod"
    printf '%-8s %-16s %-16s ok\n' "$pod" "$ip" "$veth"
    prev="${CONF%\}},\"prevResult\":$out}"
    cni CHECK "$pod" "$prev" || fail "CHECK $pod"
done

echo "==> the agent's pool"
"$BIN/vpc-cni-agent" pool --socket "$SOCK" || fail "pool"

echo "==> DEL every pod (twice: DEL is idempotent)"
for i in $(seq "$PODS"); do
    cni DEL "web-$i" >/dev/null || fail "DEL web-$i"
    cni DEL "web-$i" >/dev/null || fail "second DEL web-$i"
done

left="$("$BIN/vpc-cni-agent" pool --socket "$SOCK" | grep -c ' allocated ' || true)"
[ "$left" -eq 0 ] || fail "$left IPs still allocated after DEL"
echo "==> nothing left allocated; released IPs cool down before reuse:"
"$BIN/vpc-cni-agent" pool --socket "$SOCK" | awk 'NR==1 || / cooling/'

echo "PASS: $PODS pods added, checked and deleted through vpc-cni"
