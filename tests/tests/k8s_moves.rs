//! Privileged: a static pod leaving its node on a real cluster
//! (`vpc-sim up --kubernetes`, vpc-cni from `deploy/`): `kubectl drain`,
//! then its node's agent pod and Node object deleted during the move; the
//! same IP each time, reachable from other pods, on exactly one ENI; a
//! dual-stack static pod moved there and back (its old node's agent
//! killed) with both its addresses; and a StatefulSet scaled down and up,
//! its pods back with their IPs.

use std::time::Duration;

use vpc_cni_tests::k8s::{
    Cluster, STATIC, cloud_enis, disagreements, enis_holding, enis_holding_v6, field as s, items,
    ready, sts,
};
use vpc_cni_tests::require_root;

const WAIT: Duration = Duration::from_secs(90);

const PINGER: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: pinger}
spec:
  selector: {matchLabels: {app: pinger}}
  template:
    metadata: {labels: {app: pinger}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: localhost/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
"#;

/// The pinger pod on `node`.
fn pinger_on(c: &Cluster, node: &str) -> String {
    c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=pinger",
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
}

/// Waits until `pod` answers a ping from `from` (a pod).
fn wait_ping(c: &Cluster, from: &str, pod: &str, ip: &str) {
    c.wait_until(&format!("{from} pings {pod} at {ip}"), WAIT, || {
        c.try_kubectl(
            &["exec", from, "--", "ping", "-c", "1", "-W", "2", ip],
            None,
        )
        .is_ok()
    });
}

/// Waits until `ip` is on exactly one ENI in the cloud, attached to `node`.
fn wait_on_one_eni_of(c: &Cluster, ip: &str, node: &str) {
    c.wait_until(&format!("{ip} on exactly one ENI, {node}'s"), WAIT, || {
        let holders = enis_holding(c, ip);
        let enis = cloud_enis(c);
        holders.len() == 1 && enis[&holders[0]]["attached_to"] == node
    });
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_static_pod_leaves_a_drained_node_and_a_deleted_one_with_its_ip() {
    require_root();
    let c = Cluster::up(2);
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    let nodes = [
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    ];
    c.apply(PINGER);
    c.apply(&sts("web", 1, STATIC));
    let first = c.wait_ready("web-0", WAIT);
    let ip = s(&first, &["status", "podIP"]).to_string();
    let a = s(&first, &["spec", "nodeName"]).to_string();
    let b = nodes
        .iter()
        .find(|n| **n != a)
        .expect("the other node")
        .clone();
    let index = |node: &str| 1 + nodes.iter().position(|n| n == node).expect("a node");
    c.kubectl(&["rollout", "status", "daemonset/pinger", "--timeout=90s"]);
    let (pinger_a, pinger_b) = (pinger_on(&c, &a), pinger_on(&c, &b));

    // Move 1: A cordoned and drained; web-0 comes back on B with its IP.
    c.kubectl(&[
        "drain",
        &a,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    c.wait_until("web-0 Running on B", WAIT, || {
        c.pod("web-0")
            .is_some_and(|p| s(&p, &["spec", "nodeName"]) == b && ready(&p))
    });
    assert_eq!(c.pod_ip("web-0", WAIT), ip, "the same IP on B");
    c.wait_until("the claim Bound on B", WAIT, || {
        c.object("vipc", "web-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "node"]) == b
        })
    });
    wait_on_one_eni_of(&c, &ip, &b);
    wait_ping(&c, &pinger_b, "web-0", &ip);
    wait_ping(&c, &pinger_a, "web-0", &ip);
    c.wait_until("A's pool no longer lists it", WAIT, || {
        !c.pool(index(&a))
            .enis
            .iter()
            .any(|e| e.ips.iter().any(|i| i.ip.to_string() == ip))
    });
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });

    // Move 2, back to A, while B's agent pod and B's Node are deleted: A
    // takes the claim over without B.
    c.kubectl(&["uncordon", &a]);
    c.kubectl(&["cordon", &b]);
    let agent_b = c.agent_pod(index(&b));
    c.kubectl(&[
        "delete",
        "pod",
        "web-0",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    c.kubectl(&[
        "-n",
        &ns,
        "delete",
        "pod",
        &agent_b,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    c.kubectl(&["delete", "node", &b, "--wait=false"]);
    c.wait_until("web-0 Running on A", Duration::from_secs(180), || {
        c.pod("web-0")
            .is_some_and(|p| s(&p, &["spec", "nodeName"]) == a && ready(&p))
    });
    assert_eq!(c.pod_ip("web-0", WAIT), ip, "the same IP back on A");
    c.wait_until("the claim Bound on A", WAIT, || {
        c.object("vipc", "web-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "node"]) == a
        })
    });
    wait_on_one_eni_of(&c, &ip, &a);
    wait_ping(&c, &pinger_a, "web-0", &ip);
    // Every VpcIP's address is on exactly one ENI.
    let vips = items(&c, "vip");
    assert!(!vips.is_empty(), "web-0 has its VpcIP");
    for vip in vips {
        let addr = s(&vip, &["metadata", "name"]);
        let on = enis_holding(&c, addr);
        assert_eq!(on.len(), 1, "{addr} is on {on:?}");
    }
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_statefulset_scaled_down_and_up_gets_its_ips_back_and_its_deletion_frees_them() {
    require_root();
    let c = Cluster::up(2);
    // Owner references on, as an operator who wants workloads' deletion to
    // free their static IPs sets them.
    c.set_config("enable-ownerref", "true");
    c.apply(&sts("web", 3, STATIC));
    let names = ["web-0", "web-1", "web-2"];
    let ips: Vec<String> = names.iter().map(|n| c.pod_ip(n, WAIT)).collect();
    let phase = |kind: &str, name: &str, path: &[&str]| {
        c.object(kind, name)
            .map(|v| s(&v, path).to_string())
            .unwrap_or_default()
    };

    // Down to one: web-1 and web-2's claims and IPs are Reserved, kept.
    c.kubectl(&["scale", "statefulset", "web", "--replicas=1"]);
    for (name, ip) in names.iter().zip(&ips).skip(1) {
        c.wait_until(&format!("{name} Reserved"), WAIT, || {
            phase("vipc", name, &["status", "phase"]) == "Reserved"
                && phase("vip", ip, &["spec", "phase"]) == "Reserved"
        });
    }
    let listed = c.kubectl(&["get", "vipc"]);
    assert!(
        listed.lines().filter(|l| l.contains("Reserved")).count() == 2,
        "kubectl get vipc shows both Reserved:\n{listed}"
    );

    // Back to three: each pod gets its own IP again, each on one ENI.
    c.kubectl(&["scale", "statefulset", "web", "--replicas=3"]);
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(&c.pod_ip(name, WAIT), ip, "{name} back with its IP");
        c.wait_until(&format!("{ip} on exactly one ENI"), WAIT, || {
            enis_holding(&c, ip).len() == 1
        });
    }
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });

    // Orphaned and re-created (`--cascade=orphan`): the garbage collector
    // takes the owner references off; the claims stay, and the new
    // StatefulSet's pods adopt them with their IPs.
    let owner_uid = |name: &str| {
        c.object("vipc", name).and_then(|v| {
            v["metadata"]["ownerReferences"][0]["uid"]
                .as_str()
                .map(String::from)
        })
    };
    let old_uid = owner_uid("web-1").expect("owned by the StatefulSet");
    c.kubectl(&[
        "delete",
        "statefulset",
        "web",
        "--cascade=orphan",
        "--wait=true",
    ]);
    c.wait_until("the claims orphaned", WAIT, || {
        names
            .iter()
            .all(|n| owner_uid(n).is_none() && c.object("vipc", n).is_some())
    });
    c.apply(&sts("web", 3, STATIC));
    c.kubectl(&["delete", "pod", "web-1", "--wait=true"]);
    assert_eq!(c.pod_ip("web-1", WAIT), ips[1], "web-1 back with its IP");
    c.wait_until("web-1's claim adopted by the new StatefulSet", WAIT, || {
        owner_uid("web-1").is_some_and(|u| u != old_uid)
    });
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(
            &c.pod_ip(name, WAIT),
            ip,
            "{name} kept its IP through the orphaning"
        );
    }
    // The other two adopt theirs at their next start.
    for name in ["web-0", "web-2"] {
        c.kubectl(&["delete", "pod", name, "--wait=true"]);
    }
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(&c.pod_ip(name, WAIT), ip, "{name} back with its IP");
    }
    c.wait_until("every claim owned by the new StatefulSet", WAIT, || {
        names
            .iter()
            .all(|n| owner_uid(n).is_some_and(|u| u != old_uid))
    });

    // The workload deleted: its claims (owned by it) and IPs go.
    c.kubectl(&["delete", "statefulset", "web", "--wait=true"]);
    for (name, ip) in names.iter().zip(&ips) {
        c.wait_until(&format!("{name}'s claim and VpcIP gone"), WAIT, || {
            c.object("vipc", name).is_none() && c.object("vip", ip).is_none()
        });
    }
    c.wait_until(
        "the addresses back in the pools (or the subnet), none on two ENIs",
        WAIT,
        || disagreements(&c).is_empty() && ips.iter().all(|ip| enis_holding(&c, ip).len() <= 1),
    );
}

/// The addresses of pod `p` (`status.podIPs`).
fn pod_ips(p: &serde_json::Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect()
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_dual_stack_static_pod_moves_to_another_node_with_both_its_addresses() {
    require_root();
    let c = Cluster::up_with(2, &["--ip-family", "dual"]);
    c.apply(PINGER);
    c.apply(&sts("web", 1, STATIC));
    let first = c.wait_ready("web-0", WAIT);
    let ips = pod_ips(&first);
    let [v4, v6] = &ips[..] else {
        panic!("web-0 has an address of each family: {ips:?}")
    };
    assert!(v6.contains(':'), "{ips:?}");
    let a = s(&first, &["spec", "nodeName"]).to_string();
    // Both shown on its claim and on its address's VpcIP.
    c.wait_until(
        "the claim and the VpcIP show the IPv6 address",
        WAIT,
        || {
            c.object("vipc", "web-0")
                .is_some_and(|o| s(&o, &["status", "ipv6"]) == v6)
                && c.object("vip", v4)
                    .is_some_and(|o| s(&o, &["spec", "ipv6"]) == v6)
        },
    );
    let shown = c.kubectl(&["get", "vipc", "web-0"]);
    assert!(
        shown.contains("IPV6") && shown.contains(v6.as_str()),
        "{shown}"
    );
    c.kubectl(&["rollout", "status", "daemonset/pinger", "--timeout=90s"]);

    c.kubectl(&[
        "drain",
        &a,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    c.wait_until("web-0 Running on the other node", WAIT, || {
        c.pod("web-0")
            .is_some_and(|p| s(&p, &["spec", "nodeName"]) != a && ready(&p))
    });
    let moved = c.pod("web-0").expect("web-0");
    let b = s(&moved, &["spec", "nodeName"]).to_string();
    assert_eq!(pod_ips(&moved), ips, "the same two addresses on {b}");
    // Held by `node`: on one ENI of it each, reachable by both from pods
    // on both nodes.
    let settled_on = |node: &str| {
        c.wait_until(&format!("the claim Bound on {node}"), WAIT, || {
            c.object("vipc", "web-0").is_some_and(|o| {
                s(&o, &["status", "phase"]) == "Bound"
                    && s(&o, &["status", "node"]) == node
                    && s(&o, &["status", "ipv6"]) == v6
            })
        });
        wait_on_one_eni_of(&c, v4, node);
        c.wait_until(&format!("{v6} on exactly one ENI, {node}'s"), WAIT, || {
            let holders = enis_holding_v6(&c, v6);
            holders.len() == 1 && cloud_enis(&c)[&holders[0]]["attached_to"] == node
        });
        for from_node in [&a, &b] {
            let from = pinger_on(&c, from_node);
            wait_ping(&c, &from, "web-0", v4);
            c.wait_until(&format!("{from} pings web-0 at {v6}"), WAIT, || {
                c.try_kubectl(
                    &["exec", &from, "--", "ping", "-6", "-c", "1", "-W", "2", v6],
                    None,
                )
                .is_ok()
            });
        }
    };
    settled_on(&b);

    // Back to the first node while the second one's agent is killed: the
    // taker moves both addresses without it.
    let nodes = [
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    ];
    let index_b = 1 + nodes.iter().position(|n| *n == b).expect("a node");
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    c.kubectl(&["uncordon", &a]);
    c.kubectl(&["cordon", &b]);
    let agent_b = c.agent_pod(index_b);
    for (namespace, pod) in [("default", "web-0"), (ns.as_str(), agent_b.as_str())] {
        c.kubectl(&[
            "-n",
            namespace,
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
    }
    c.wait_until(
        "web-0 Running on the first node again",
        Duration::from_secs(180),
        || {
            c.pod("web-0")
                .is_some_and(|p| s(&p, &["spec", "nodeName"]) == a && ready(&p))
        },
    );
    let back = c.pod("web-0").expect("web-0");
    assert_eq!(pod_ips(&back), ips, "the same two addresses back on {a}");
    settled_on(&a);
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });
}
