//! Privileged: a static pod is scheduled only into its claim's zone, on a
//! real cluster (`vpc-sim up --kubernetes --zones 2`, vpc-cni from
//! `deploy/`): the cluster component's webhook adds the node affinity, the
//! scheduler says why a pod waits, a pod without a claim is left alone; a
//! pod forced onto a node of another zone is refused, by the kubelet while
//! the webhook serves and by the agent's ADD when it does not.

use std::time::Duration;

use vpc_cni_tests::k8s::{Cluster, STATIC, field as s, pin, pod, sts};
use vpc_cni_tests::require_root;

const WAIT: Duration = Duration::from_secs(90);
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn zone_of(c: &Cluster, node: &str) -> String {
    c.object("node", node)
        .map(|n| s(&n, &["metadata", "labels", ZONE_LABEL]).to_string())
        .unwrap_or_default()
}

/// The webhook serves: a replica of the cluster component is Ready (its
/// readiness probe is the webhook's `/healthz`) and its CA is in the
/// configuration.
fn wait_webhook(c: &Cluster) {
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    c.wait_until("the zone webhook serves", WAIT, || {
        let ready = c
            .try_kubectl(
                &[
                    "-n",
                    &ns,
                    "get",
                    "deployment",
                    "vpc-cni-cluster",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
                None,
            )
            .is_ok_and(|r| r.trim().parse::<u32>().is_ok_and(|n| n >= 1));
        let ca = c
            .try_kubectl(
                &[
                    "get",
                    "mutatingwebhookconfiguration",
                    "vpc-cni-zone",
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ],
                None,
            )
            .is_ok_and(|b| !b.trim().is_empty());
        ready && ca
    });
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_static_pod_is_scheduled_only_into_its_claims_zone() {
    require_root();
    let c = Cluster::up_with(3, &["--zones", "2"]);
    let node = |n: usize| c.get(&format!("NODE{n}_INSTANCE")).to_string();
    let (a1, b, a2) = (node(1), node(2), node(3));
    assert_eq!(zone_of(&c, &a1), "sim-zone-1");
    assert_eq!(zone_of(&c, &b), "sim-zone-2");
    assert_eq!(zone_of(&c, &a2), "sim-zone-1");
    wait_webhook(&c);

    // A pod without a claim is created as it was written.
    c.apply(&pod("plain", ""));
    let plain = c.wait_ready("plain", WAIT);
    assert!(plain["spec"]["affinity"].is_null(), "{plain}");
    assert!(
        plain["metadata"]["annotations"]["vpc-cni.io/zone"].is_null(),
        "{plain}"
    );

    // web-0's first pod has no claim yet: unchanged, placed on a1 (the only
    // schedulable node), where its static IP is bound in zone 1.
    c.kubectl(&["cordon", &b]);
    c.kubectl(&["cordon", &a2]);
    c.apply(&sts("web", 1, STATIC));
    let first = c.wait_ready("web-0", WAIT);
    assert_eq!(s(&first, &["spec", "nodeName"]), a1);
    assert!(first["spec"]["affinity"].is_null(), "{first}");
    let ip = s(&first, &["status", "podIP"]).to_string();
    c.wait_until("web-0's claim Bound on a1 in zone 1", WAIT, || {
        c.object("vipc", "web-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound"
                && s(&v, &["status", "node"]) == a1
                && s(&v, &["status", "zone"]) == "sim-zone-1"
        })
    });

    // Only the zone-2 node can take pods now: web-0's next pod must not go
    // there (its IP could never follow it), so it waits, saying why.
    c.kubectl(&["cordon", &a1]);
    c.kubectl(&["uncordon", &b]);
    c.kubectl(&["delete", "pod", "web-0", "--wait=true"]);
    c.wait_until("a new web-0 pinned to zone 1", WAIT, || {
        c.pod("web-0").is_some_and(|p| {
            s(&p, &["metadata", "annotations", "vpc-cni.io/zone"]).starts_with("sim-zone-1 ")
        })
    });
    let pinned = c.pod("web-0").expect("web-0");
    let terms = &pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0],
        serde_json::json!({"key": ZONE_LABEL, "operator": "In", "values": ["sim-zone-1"]}),
        "{pinned}"
    );
    assert!(
        s(&pinned, &["metadata", "annotations", "vpc-cni.io/zone"]).contains(&ip),
        "the annotation names the IP: {pinned}"
    );
    c.wait_until("FailedScheduling naming the node affinity", WAIT, || {
        c.events().lines().any(|l| {
            l.starts_with("FailedScheduling ") && l.contains("didn't match Pod's node affinity")
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    let waiting = c.pod("web-0").expect("web-0");
    assert_eq!(s(&waiting, &["status", "phase"]), "Pending", "{waiting}");
    assert_eq!(s(&waiting, &["spec", "nodeName"]), "", "{waiting}");

    // A zone-1 node can take it again: web-0 runs there with its IP.
    c.kubectl(&["uncordon", &a2]);
    let moved = c.wait_ready("web-0", WAIT);
    assert_eq!(s(&moved, &["spec", "nodeName"]), a2);
    assert_eq!(s(&moved, &["status", "podIP"]), ip, "the same IP in zone 1");
    c.wait_until("the claim Bound on a2", WAIT, || {
        c.object("vipc", "web-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound"
                && s(&v, &["status", "node"]) == a2
                && s(&v, &["status", "ip"]) == ip
        })
    });

    // Forced onto the zone-2 node (nodeName, no scheduler): the kubelet
    // there refuses the pod, whose affinity requires zone 1.
    c.apply(&pin(&sts("web", 1, STATIC), &b));
    c.wait_until("the kubelet refuses web-0 on the zone-2 node", WAIT, || {
        c.events()
            .lines()
            .any(|l| l.starts_with("NodeAffinity ") && l.contains("node affinity"))
    });
    // Without the webhook (the cluster component stopped) the pod is
    // created unpinned and lands there; its ADD is refused naming both
    // zones, and the claim stays in zone 1.
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    c.kubectl(&[
        "-n",
        &ns,
        "scale",
        "deployment",
        "vpc-cni-cluster",
        "--replicas=0",
    ]);
    c.wait_until(
        "the ADD on the zone-2 node is refused naming the zones",
        WAIT,
        || {
            c.events().lines().any(|l| {
                l.contains("its subnet is in zone sim-zone-1, this node in zone sim-zone-2")
            })
        },
    );
    let claim = c.object("vipc", "web-0").expect("claim");
    assert_eq!(s(&claim, &["status", "phase"]), "Reserved", "{claim}");
    assert_eq!(s(&claim, &["status", "node"]), a2, "{claim}");
    assert_eq!(s(&claim, &["status", "zone"]), "sim-zone-1", "{claim}");
}
