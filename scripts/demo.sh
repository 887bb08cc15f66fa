#!/usr/bin/env bash
# The embedded default: `vpc-sim demo`. A simulated VPC with two nodes on
# this machine (network namespaces, a router namespace with the subnet's
# bridge, ENIs as veth pairs), a vpc-cni agent per node with the netlink
# data path, 4 pods per node wired by the real `vpc-cni` binary as kubelet
# runs it, real ICMP between pods on one node, across nodes and to the
# subnet gateway, egress to an outside host seen from the node's address
# (pod to pod keeps the pod's), then every pod deleted and the nodes checked
# for leftovers. Exits non-zero if any check fails. Needs root.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_apt gcc libc6-dev iproute2 iputils-ping nftables
need_rust
cd "$ROOT"

echo "==> building (release)"
build_release -p node-agent -p vpc-sim
exec "$ROOT/target/release/vpc-sim" demo "$@"
