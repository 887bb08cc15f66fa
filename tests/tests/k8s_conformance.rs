//! Privileged: Kubernetes' own network specs (the upstream e2e.test of the
//! pinned release, built by `scripts/k8s-bins.sh`) on a simulated cluster
//! with kube-proxy, CoreDNS and the VPC's source/destination check on. The
//! whole `[sig-network]` conformance set is `scripts/conformance.sh`; the
//! suite runs the four pod-networking granular checks, a NodePort spec and
//! a DNS spec, and six dual-stack specs on a dual-stack cluster.

use std::path::Path;
use std::process::{Command, Stdio};

use vpc_cni_tests::k8s::Cluster;
use vpc_cni_tests::{bin, require_root};

/// The specs, as Ginkgo regular expressions.
const SPECS: [&str; 6] = [
    r"Networking Granular Checks: Pods should function for intra-pod communication: http",
    r"Networking Granular Checks: Pods should function for intra-pod communication: udp",
    r"Networking Granular Checks: Pods should function for node-pod communication: http",
    r"Networking Granular Checks: Pods should function for node-pod communication: udp",
    r"Services should be able to create a functioning NodePort service \[Conformance\]",
    r"DNS should provide DNS for services \[Conformance\]",
];

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_upstream_network_conformance_specs_pass() {
    require_root();
    let c = Cluster::up_with(2, &["--e2e-images"]);
    specs_pass(&c, &SPECS);
}

/// Upstream dual-stack specs (`[Feature:IPv6DualStack]`) on a dual-stack
/// cluster: both families in a pod's and a node's IPs, a Service with a
/// ClusterIP of each, a pod reached by both, and a Service's IPv6
/// ClusterIP from a pod and from a node. `IP_FAMILY=dual
/// scripts/conformance.sh` runs all of them.
const DUAL_SPECS: [&str; 6] = [
    r"\[Feature:IPv6DualStack\] should create pod, add ipv6 and ipv4 ip to pod ips",
    r"\[Feature:IPv6DualStack\] should have ipv4 and ipv6 internal node ip",
    r"\[Feature:IPv6DualStack\] should create service with ipv4,v6 cluster ip",
    r"\[Feature:IPv6DualStack\] should be able to reach pod on ipv4 and ipv6 ip",
    r"\[Feature:IPv6DualStack\] Granular Checks: Services Secondary IP Family \[LinuxOnly\] should function for pod-Service: http",
    r"\[Feature:IPv6DualStack\] Granular Checks: Services Secondary IP Family \[LinuxOnly\] should function for node-Service: http",
];

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_upstream_dual_stack_specs_pass() {
    require_root();
    let c = Cluster::up_with(2, &["--e2e-images", "--ip-family", "dual"]);
    specs_pass(&c, &DUAL_SPECS);
}

/// Runs the upstream `specs` on `c`: every one must run and pass, and the
/// VPC's source/destination check must have dropped nothing meanwhile.
fn specs_pass(c: &Cluster, specs: &[&str]) {
    let kubectl = Path::new(c.get("KUBECTL"));
    let e2e = kubectl.with_file_name("e2e.test");
    assert!(
        e2e.is_file(),
        "{} is missing (scripts/k8s-bins.sh)",
        e2e.display()
    );
    let report = c.dir.path().join("e2e.json");
    let out = Command::new(&e2e)
        .arg(format!("--kubeconfig={}", c.get("KUBECONFIG")))
        .arg(format!("--kubectl-path={}", kubectl.display()))
        .arg("--provider=local")
        .arg(format!("--ginkgo.focus={}", specs.join("|")))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=20m")
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run e2e.test");
    let table = Command::new(bin("vpc-sim"))
        .arg("e2e-report")
        .arg(&report)
        .output()
        .expect("vpc-sim e2e-report");
    let table_text = String::from_utf8_lossy(&table.stdout);
    let log = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    assert!(
        out.status.success() && table.status.success(),
        "{table_text}\n{}\nthe end of e2e.test's output:\n{}",
        String::from_utf8_lossy(&table.stderr),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        table_text.contains(&format!("{} passed, 0 failed", specs.len())),
        "every spec must run and pass:\n{table_text}"
    );
    let check = Command::new(bin("vpc-sim"))
        .args(["source-check", "--state"])
        .arg(c.state())
        .output()
        .expect("vpc-sim source-check");
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains("\n0 packets from ENIs with a source they do not hold"),
        "the VPC dropped packets during the specs:\n{check}"
    );
}
