#!/usr/bin/env bash
# Removes vpc-cni from a cluster (README, "Uninstall"):
#
#   deploy/uninstall/uninstall.sh [--keep-ips] [--timeout SECONDS]
#
# 0. refuses while pods other than host-network ones run (their DEL needs
#    the plugin): delete or drain them first;
# 1. releases every static IP: deletes every VpcIPClaim while the agents
#    still run, so each agent gives its addresses back to the cloud;
# 2. has every node give back its secondary ENIs: warm targets 0, the
#    agents restarted, until every NodeEniConfig counts no ENI;
# 3. removes the agents and the cluster component (`helm uninstall` when
#    a Helm release vpc-cni exists, else `kubectl delete` of deploy/);
# 4. cleans every node (deploy/uninstall/node-cleanup.yaml: the node-wide
#    nftables table and policy rules, the plugin, the conflist, the store);
# 5. deletes the vpc-cni.io objects (finalizers first: no agent is left to
#    remove them), the CRDs and the namespace.
#
# --keep-ips skips 1, 2 and 5: the ENIs stay attached with their addresses,
# and the VpcIPClaims (the record of every static IP), the CRDs and the
# namespace stay, so an install later takes every static IP up again.
#
# Uses KUBECTL (default kubectl) and HELM (default helm; optional) with the
# usual KUBECONFIG.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(dirname "$HERE")"
NS=vpc-cni-system
KUBECTL="${KUBECTL:-kubectl}"
HELM="${HELM:-helm}"
KEEP=0
TIMEOUT=300

while [ $# -gt 0 ]; do
    case "$1" in
        --keep-ips) KEEP=1 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

k() { "$KUBECTL" "$@"; }
say() { echo "==> uninstall: $*"; }

# wait_for WHAT CMD...: until CMD succeeds, at most TIMEOUT seconds.
wait_for() {
    local what="$1" deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "uninstall: $what: not within ${TIMEOUT}s" >&2
            return 1
        fi
        sleep 2
    done
}

if ! k get namespace "$NS" >/dev/null 2>&1; then
    say "no namespace $NS: vpc-cni is not installed"
    exit 0
fi

# 0. Nothing on the pod network any more.
on_network=$(k get pods -A -o go-template='{{range .items}}{{if and (not .spec.hostNetwork) (ne .status.phase "Succeeded") (ne .status.phase "Failed")}}{{.metadata.namespace}}/{{.metadata.name}}{{"\n"}}{{end}}{{end}}')
if [ -n "$on_network" ]; then
    echo "uninstall: these pods use vpc-cni's network; delete them (or drain their nodes) first:" >&2
    echo "$on_network" | sed 's/^/  /' >&2
    exit 1
fi

have_crd() { k get crd "$1" >/dev/null 2>&1; }
agents_running() { k -n "$NS" get daemonset vpc-cni-agent >/dev/null 2>&1; }

# The image the agents run: the node clean-up runs the same.
IMAGE=$(k -n "$NS" get daemonset vpc-cni-agent -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null || true)
IMAGE="${IMAGE:-localhost/vpc-cni:dev}"

if [ "$KEEP" = 0 ] && agents_running; then
    # 1. Static IPs given back.
    if have_crd vpcipclaims.vpc-cni.io; then
        say "releasing every static IP (kubectl delete vipc --all -A)"
        k delete vipc --all -A --wait=false >/dev/null
        no_claims() { [ -z "$(k get vipc -A -o name)" ]; }
        wait_for "every VpcIPClaim released" no_claims
    fi
    # 2. ENIs given back.
    say "every node gives back its secondary ENIs (warm targets 0)"
    k -n "$NS" patch configmap vpc-cni-config --type merge \
        -p '{"data":{"warm-ip-target":"0","warm-eni-target":"0","min-ip-target":"0"}}' >/dev/null
    k -n "$NS" rollout restart daemonset/vpc-cni-agent >/dev/null
    k -n "$NS" rollout status daemonset/vpc-cni-agent --timeout="${TIMEOUT}s" >/dev/null
    no_enis() {
        [ -z "$(k get nec -o go-template='{{range .items}}{{if .status}}{{if .status.eniCount}}{{.metadata.name}} {{end}}{{end}}{{end}}')" ]
    }
    wait_for "every node's secondary ENIs released" no_enis
fi

# 3. The components.
if "$HELM" status vpc-cni -n "$NS" >/dev/null 2>&1; then
    say "helm uninstall vpc-cni"
    "$HELM" uninstall vpc-cni -n "$NS" --wait --timeout "${TIMEOUT}s" >/dev/null
else
    say "kubectl delete -f deploy/ (the CRDs and the namespace aside)"
    for f in "$DEPLOY"/*.yaml; do
        case "$(basename "$f")" in 00-namespace.yaml|05-crds.yaml) continue ;; esac
        k delete -f "$f" --ignore-not-found --wait=false >/dev/null
    done
fi
no_agents() { [ -z "$(k -n "$NS" get pods -l 'app.kubernetes.io/name in (vpc-cni-agent,vpc-cni-cluster)' -o name)" ]; }
wait_for "the agents and the cluster component gone" no_agents

# 4. Every node clean.
say "cleaning every node ($IMAGE)"
sed "s|image: localhost/vpc-cni:dev|image: $IMAGE|" "$HERE/node-cleanup.yaml" | k apply -f - >/dev/null
k -n "$NS" rollout status daemonset/vpc-cni-node-cleanup --timeout="${TIMEOUT}s" >/dev/null
k -n "$NS" delete daemonset vpc-cni-node-cleanup --wait=true >/dev/null

if [ "$KEEP" = 1 ]; then
    say "done; kept: the ENIs and their addresses in the cloud, the vpc-cni.io objects and CRDs, the namespace $NS"
    exit 0
fi

# 5. Objects, CRDs, namespace.
for crd in vpcipclaims vpcips nodeeniconfigs; do
    have_crd "$crd.vpc-cni.io" || continue
    k get "$crd.vpc-cni.io" -A -o go-template='{{range .items}}{{if .metadata.finalizers}}{{if .metadata.namespace}}{{.metadata.namespace}}{{else}}-{{end}} {{.metadata.name}}{{"\n"}}{{end}}{{end}}' |
        while read -r ns name; do
            [ -n "$name" ] || continue
            if [ "$ns" = - ]; then
                k patch "$crd.vpc-cni.io" "$name" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null
            else
                k -n "$ns" patch "$crd.vpc-cni.io" "$name" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null
            fi
        done
    say "kubectl delete crd $crd.vpc-cni.io"
    k delete crd "$crd.vpc-cni.io" --wait=true --timeout="${TIMEOUT}s" >/dev/null
done
say "kubectl delete namespace $NS"
k delete namespace "$NS" --wait=true --timeout="${TIMEOUT}s" >/dev/null
say "done: nothing of vpc-cni is left in the cluster, on the nodes or in the cloud"
