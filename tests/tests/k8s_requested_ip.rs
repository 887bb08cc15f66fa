//! Privileged: a requested address on a real cluster (`vpc-sim up
//! --kubernetes`, vpc-cni from `deploy/`), driven with kubectl: a pod with
//! the annotation `tke.cloud.tencent.com/vpc-ip-claim-requested-ip` gets
//! that address; another pod asking for it, on the same node or another,
//! gets an event naming the holder; of two pods racing for one address on
//! two nodes exactly one wins; and, counted through the emulator's world,
//! every address is on exactly one ENI.

use std::collections::BTreeMap;
use std::time::Duration;

use vpc_cni_tests::k8s::{Cluster, cloud_enis, field as s, pin, pod};
use vpc_cni_tests::require_root;

const WAIT: Duration = Duration::from_secs(90);
const REQUESTED: &str = "tke.cloud.tencent.com/vpc-ip-claim-requested-ip";

/// A pod on `node` asking for `ip` (any annotation value, malformed too).
/// A pod on `node` asking for `ip`.
fn requesting(name: &str, node: &str, ip: &str) -> String {
    pin(&pod(name, &format!("{REQUESTED}: \"{ip}\"")), node)
}

/// The ENIs of the cloud that carry each address, primary or secondary.
fn enis_by_address(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, eni) in cloud_enis(c) {
        let primary = eni["primary_ip"].as_str().map(str::to_string);
        let secondary = eni["secondary_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str().map(str::to_string));
        for ip in primary.into_iter().chain(secondary) {
            by_ip.entry(ip).or_default().push(id.clone());
        }
    }
    by_ip
}

/// Each address is on exactly one ENI; `ip` on one attached to `node`.
fn on_exactly_one_eni(c: &Cluster, ip: &str, node: &str) {
    let by_ip = enis_by_address(c);
    let twice: Vec<_> = by_ip.iter().filter(|(_, e)| e.len() != 1).collect();
    assert!(twice.is_empty(), "addresses on several ENIs: {twice:?}");
    let eni = &by_ip.get(ip).expect("the address is on an ENI")[0];
    assert_eq!(
        cloud_enis(c)[eni.as_str()]["attached_to"].as_str(),
        Some(node),
        "{ip} is on {eni}, an ENI of {node}"
    );
}

/// The events about pod `name`, as `REASON MESSAGE` lines.
fn events_of(c: &Cluster, name: &str) -> Vec<String> {
    c.try_kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
        ],
        None,
    )
    .unwrap_or_default()
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_pod_gets_its_requested_ip_and_a_second_one_is_told_who_holds_it() {
    require_root();
    let c = Cluster::up(2);
    let node1 = c.get("NODE1_INSTANCE").to_string();
    let node2 = c.get("NODE2_INSTANCE").to_string();

    // The address is nobody's yet: assigned by address to an ENI of node1.
    let ip = "10.0.20.7";
    c.apply(&requesting("asker", &node1, ip));
    let p = c.wait_ready("asker", WAIT);
    assert_eq!(s(&p, &["status", "podIP"]), ip);
    c.wait_until(
        "the claim and the VpcIP show the requested address",
        WAIT,
        || {
            c.object("vipc", "asker").is_some_and(|v| {
                s(&v, &["spec", "ip"]) == ip
                    && s(&v, &["status", "ip"]) == ip
                    && s(&v, &["status", "phase"]) == "Bound"
                    && s(&v, &["spec", "deletePolicy"]) == "Never"
            }) && c.object("vip", ip).is_some_and(|v| {
                s(&v, &["spec", "phase"]) == "Bound"
                    && s(&v, &["spec", "node"]) == node1
                    && s(&v, &["spec", "claim"]) == "default/asker"
            })
        },
    );
    on_exactly_one_eni(&c, ip, &node1);

    // Asked for again, on the same node and on another: refused, naming
    // the holder, and the address stays where it is.
    c.apply(&requesting("again-here", &node1, ip));
    c.apply(&requesting("again-there", &node2, ip));
    c.wait_until(
        "the same node's refusal names the pod holding it",
        WAIT,
        || {
            events_of(&c, "again-here")
                .iter()
                .any(|l| l.contains(ip) && l.contains("held by pod default/asker on this node"))
        },
    );
    c.wait_until(
        "the other node's refusal names node1 and the pod",
        WAIT,
        || {
            events_of(&c, "again-there").iter().any(|l| {
                l.contains(ip)
                    && l.contains(&format!("held by node {node1}"))
                    && l.contains("default/asker")
            })
        },
    );
    for name in ["again-here", "again-there"] {
        assert!(
            c.pod(name)
                .is_some_and(|p| s(&p, &["status", "podIP"]).is_empty()),
            "{name} has no IP"
        );
        assert!(c.object("vipc", name).is_none(), "{name} holds no claim");
    }
    on_exactly_one_eni(&c, ip, &node1);

    // A malformed annotation: the event names it.
    c.apply(&requesting("malformed", &node1, "10.0.20"));
    c.wait_until("the malformed annotation is named", WAIT, || {
        events_of(&c, "malformed")
            .iter()
            .any(|l| l.contains(REQUESTED) && l.contains("is not an IPv4 address"))
    });

    // The holder gone, its static claim still keeps the address for it.
    c.kubectl(&["delete", "pod", "again-here", "again-there", "--wait=false"]);
    c.kubectl(&["delete", "pod", "asker"]);
    c.apply(&requesting("asker", &node1, ip));
    let p = c.wait_ready("asker", WAIT);
    assert_eq!(s(&p, &["status", "podIP"]), ip, "back with its address");
    on_exactly_one_eni(&c, ip, &node1);
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_two_pods_racing_for_one_requested_ip_on_two_nodes_one_wins() {
    require_root();
    let c = Cluster::up(2);
    let nodes = [
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    ];
    let ip = "10.0.20.9";
    // Both in one apply: the two kubelets ask their agents at once.
    c.apply(&format!(
        "{}---\n{}",
        requesting("racer-1", &nodes[0], ip),
        requesting("racer-2", &nodes[1], ip)
    ));
    let ready = |name: &str| c.pod(name).is_some_and(|p| vpc_cni_tests::k8s::ready(&p));
    c.wait_until("one racer is Ready", WAIT, || {
        ready("racer-1") || ready("racer-2")
    });
    let (winner, loser, node) = if ready("racer-1") {
        ("racer-1", "racer-2", &nodes[0])
    } else {
        ("racer-2", "racer-1", &nodes[1])
    };
    let p = c.wait_ready(winner, WAIT);
    assert_eq!(s(&p, &["status", "podIP"]), ip);
    c.wait_until("the loser is told who holds the address", WAIT, || {
        events_of(&c, loser).iter().any(|l| {
            // The fence (the winner's VpcIP) names it; or, had both passed
            // it, the cloud refused the second assign.
            l.contains(ip)
                && ((l.contains("held by") && l.contains(&format!("default/{winner}")))
                    || l.contains("in use in the VPC"))
        })
    });
    // Some retries of the loser later, it still has no address.
    std::thread::sleep(Duration::from_secs(5));
    assert!(!ready(loser), "only one racer wins");
    assert!(
        c.pod(loser)
            .is_some_and(|p| s(&p, &["status", "podIP"]).is_empty())
    );
    c.wait_until("the VpcIP names the winner", WAIT, || {
        c.object("vip", ip).is_some_and(|v| {
            s(&v, &["spec", "phase"]) == "Bound"
                && s(&v, &["spec", "node"]) == node.as_str()
                && s(&v, &["spec", "claim"]) == format!("default/{winner}")
        })
    });
    on_exactly_one_eni(&c, ip, node);
}
