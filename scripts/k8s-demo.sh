#!/usr/bin/env bash
# `vpc-sim demo --kubernetes`: the simulated VPC with two nodes, a real
# Kubernetes control plane on this machine and a containerd and kubelet in
# every node, vpc-cni installed on it from deploy/ (a DaemonSet running the
# image localhost/vpc-cni:dev made from the release binaries); a Deployment
# (4 replicas) and a StatefulSet (2, busybox httpd with an HTTP readiness
# probe) applied with kubectl, pings and HTTP between pods across nodes through `kubectl exec`, then everything deleted and the
# nodes checked for leftovers. The Kubernetes binaries are built once into
# ~/.cache/vpc-cni/k8s (scripts/k8s-bins.sh; 20 to 40 minutes the first
# time on 2 cores). Needs root.
#
#   bash scripts/k8s-demo.sh                  vpc-cni from deploy/ (kubectl apply)
#   bash scripts/k8s-demo.sh --install helm   vpc-cni with its Helm chart

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_k8s_apt
need_rust
cd "$ROOT"

# What the demo runs (the suite's e2e binaries and promtool are not needed).
K8S_BINS="${K8S_BINS:-etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy coredns helm}" \
    bash "$ROOT/scripts/k8s-bins.sh"
echo "==> building (release)"
build_release -p node-agent -p vpc-sim
bash "$ROOT/scripts/vpc-cni-image.sh" "$ROOT/target/release"
exec "$ROOT/target/release/vpc-sim" demo --kubernetes "$@"
