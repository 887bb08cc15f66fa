//! Privileged: the agent's Kubernetes objects on a real cluster
//! (`vpc-sim up --kubernetes`, vpc-cni from `deploy/`), driven with kubectl
//! as an operator would: `VpcIPClaim`s, `VpcIP`s and `NodeEniConfig`s, TKE's
//! annotations, `kubectl delete vipc` deferred while the pod runs, the
//! `ENILimit` event, cascade with ownerrefs, the cluster component's lease.

use std::time::Duration;

use serde_json::Value;
use vpc_cni_tests::k8s::{
    Cluster, STATIC, disagreements, emulator_post, items, pin, pinned_sets, pod, sts,
};
use vpc_cni_tests::require_root;

const WAIT: Duration = Duration::from_secs(90);

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

fn pod_ip(c: &Cluster, name: &str) -> String {
    let p = c.wait_ready(name, WAIT);
    s(&p, &["status", "podIP"]).to_string()
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_claims_ips_and_node_configs_are_objects_kubectl_shows_and_deletes() {
    require_root();
    let c = Cluster::up(1);
    let node = c.get("NODE1_INSTANCE").to_string();
    c.apply(&sts("web", 2, STATIC));
    c.apply(&pod("plain", ""));
    let web0 = pod_ip(&c, "web-0");
    let web1 = pod_ip(&c, "web-1");
    let plain = pod_ip(&c, "plain");

    // Every pod has a claim while it runs, with its IP, node and policy; every
    // address in use a VpcIP.
    for (name, ip, policy) in [
        ("web-0", &web0, "Never"),
        ("web-1", &web1, "Never"),
        ("plain", &plain, "Immediate"),
    ] {
        c.wait_until(&format!("vipc {name} Bound"), WAIT, || {
            c.object("vipc", name)
                .is_some_and(|v| s(&v, &["status", "phase"]) == "Bound")
        });
        let v = c.object("vipc", name).expect("claim");
        assert_eq!(s(&v, &["status", "ip"]), ip.as_str(), "{v}");
        assert_eq!(s(&v, &["status", "node"]), node);
        assert_eq!(s(&v, &["spec", "deletePolicy"]), policy);
        assert!(s(&v, &["status", "eniId"]).starts_with("eni-"), "{v}");
        c.wait_until(&format!("vip {ip} Bound"), WAIT, || {
            c.object("vip", ip).is_some_and(|v| {
                s(&v, &["spec", "phase"]) == "Bound"
                    && s(&v, &["spec", "claim"]) == format!("default/{name}")
            })
        });
    }
    let table = c.kubectl(&["get", "vipc"]);
    assert!(
        table.starts_with("NAME") && table.contains("STATUS") && table.contains("EXPIRES"),
        "{table}"
    );
    // The node's ENIs and counts (counts are written every 10 s at most).
    let nec = c.object("nec", &node).expect("NodeEniConfig");
    assert!(
        nec["status"]["enis"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{nec}"
    );
    c.wait_until("the node's counts", WAIT, || {
        c.object("nec", &node)
            .is_some_and(|v| v["status"]["allocated"].as_u64() >= Some(3))
    });
    // The node's own CLI agrees with kubectl.
    let socket = c.get("NODE1_SOCKET").to_string();
    let claims = match proto::client::call(
        std::path::Path::new(&socket),
        &proto::wire::Request::Claims,
        Duration::from_secs(10),
    ) {
        Ok(Ok(proto::wire::Response::Claims { claims })) => claims,
        other => panic!("claims: {other:?}"),
    };
    // This test's pods (the cluster's DNS has claims of its own in kube-system).
    for cl in claims.iter().filter(|cl| cl.namespace == "default") {
        let v = c.object("vipc", &cl.name).expect("claim object");
        assert_eq!(s(&v, &["status", "ip"]), cl.ip.to_string());
        assert_eq!(s(&v, &["status", "phase"]), cl.status);
    }

    // The agent may write only its own node's objects (deploy/03-node-scope.yaml):
    // the admin's kubeconfig impersonating the agent's service account on a
    // node (the extra the API server gives a node-bound token).
    let as_agent_on = |on: &str| -> std::path::PathBuf {
        let mut kc: Value =
            serde_json::from_str(&c.kubectl(&["config", "view", "--raw", "-o", "json"]))
                .expect("kubeconfig");
        for user in kc["users"].as_array_mut().into_iter().flatten() {
            user["user"]["as"] = "system:serviceaccount:vpc-cni-system:vpc-cni-agent".into();
            user["user"]["as-user-extra"] =
                serde_json::json!({"authentication.kubernetes.io/node-name": [on]});
        }
        let path = c.state().join(format!("as-agent-{on}.kubeconfig"));
        std::fs::write(&path, kc.to_string()).expect("write kubeconfig");
        path
    };
    let label = |on: &str| {
        let kc = as_agent_on(on);
        c.try_kubectl(
            &[
                "--kubeconfig",
                &kc.to_string_lossy(),
                "label",
                "--overwrite",
                "vip",
                &web0,
                &format!("checked-by={on}"),
            ],
            None,
        )
    };
    let refused = label("ins-other").expect_err("another node's agent is refused");
    assert!(refused.contains("may only write its own node"), "{refused}");
    label(&node).expect("the node's own agent may");
    // Nor may another node's agent relabel the object to itself (the
    // policy judges the object as it was, not only as it would be), the
    // claim's either.
    let relabel = |kind: &str, name: &str| {
        let kc = as_agent_on("ins-other");
        c.try_kubectl(
            &[
                "--kubeconfig",
                &kc.to_string_lossy(),
                "label",
                "--overwrite",
                kind,
                name,
                "vpc-cni.io/node=ins-other",
            ],
            None,
        )
    };
    for (kind, name) in [("vip", web0.as_str()), ("vipc", "web-0")] {
        let refused = relabel(kind, name).expect_err("a relabel to another node is refused");
        assert!(
            refused.contains("may only write its own node"),
            "{kind}: {refused}"
        );
        let still = c.object(kind, name).expect("object");
        assert_eq!(
            s(&still, &["metadata", "labels", "vpc-cni.io/node"]),
            node,
            "{kind} {name} still this node's"
        );
    }

    // A take-over (the claim's status naming the taker, Moving) that
    // changes anything else of the claim is refused: the status is no
    // subresource, so the policy holds the rest as it was.
    let kc = as_agent_on("ins-other");
    let grab = serde_json::json!({
        "spec": { "expireAfter": "9h" },
        "status": { "node": "ins-other", "phase": "Moving" },
    });
    let refused = c
        .try_kubectl(
            &[
                "--kubeconfig",
                &kc.to_string_lossy(),
                "patch",
                "vipc",
                "web-0",
                "--type=merge",
                "-p",
                &grab.to_string(),
            ],
            None,
        )
        .expect_err("a take-over that changes the spec is refused");
    assert!(refused.contains("may only write its own node"), "{refused}");
    assert_eq!(
        s(
            &c.object("vipc", "web-0").expect("claim"),
            &["status", "node"]
        ),
        node,
        "web-0's claim still this node's"
    );

    // A static pod deleted comes back with its IP; a plain one's claim and
    // VpcIP go with it.
    c.kubectl(&["delete", "pod", "web-0", "plain", "--wait=true"]);
    assert_eq!(pod_ip(&c, "web-0"), web0, "web-0 kept its IP");
    c.wait_until("plain's claim and VpcIP gone", WAIT, || {
        c.object("vipc", "plain").is_none() && c.object("vip", &plain).is_none()
    });

    // kubectl delete vipc while the pod runs: deferred, not cut.
    c.kubectl(&["delete", "vipc", "web-1", "--wait=false"]);
    c.wait_until("DeletionDeferred on web-1's claim", WAIT, || {
        c.events()
            .lines()
            .any(|l| l.starts_with("DeletionDeferred") && l.contains("web-1"))
    });
    assert!(c.object("vipc", "web-1").is_some(), "held by the finalizer");
    assert_eq!(
        s(&c.pod("web-1").expect("web-1"), &["status", "podIP"]),
        web1,
        "the pod keeps its network"
    );
    // The pod ends (scale down): the IP is freed and the claim goes.
    c.kubectl(&["scale", "statefulset", "web", "--replicas=1"]);
    c.wait_until("web-1's claim and VpcIP gone", WAIT, || {
        c.object("vipc", "web-1").is_none() && c.object("vip", &web1).is_none()
    });
    assert!(
        c.events()
            .lines()
            .any(|l| l.starts_with("Reclaimed") && l.contains(&web1)),
        "{}",
        c.events()
    );

    // Scaled to zero, web-0's claim is Reserved, and shown as such.
    c.kubectl(&["scale", "statefulset", "web", "--replicas=0"]);
    c.wait_until("web-0 Reserved", WAIT, || {
        c.object("vipc", "web-0")
            .is_some_and(|v| s(&v, &["status", "phase"]) == "Reserved")
            && c.object("vip", &web0)
                .is_some_and(|v| s(&v, &["spec", "phase"]) == "Reserved")
    });
    c.kubectl(&["scale", "statefulset", "web", "--replicas=1"]);
    assert_eq!(pod_ip(&c, "web-0"), web0, "back with its IP");

    // A malformed annotation fails the pod's ADD with a message naming it.
    c.apply(&pod(
        "bad",
        "tke.cloud.tencent.com/vpc-ip-claim-delete-policy: Sometimes",
    ));
    c.wait_until("the pod's event names the annotation", WAIT, || {
        c.events()
            .lines()
            .any(|l| l.contains("vpc-ip-claim-delete-policy") && l.contains("Sometimes"))
    });
    assert!(c.object("vipc", "bad").is_none());

    // A namespace deleted with a static pod in it: the claim's finalizer
    // holds it only until the pod has ended and the IP is freed.
    c.kubectl(&["create", "namespace", "gone"]);
    c.try_kubectl(
        &["-n", "gone", "apply", "-f", "-"],
        Some(&pod("lonely", STATIC)),
    )
    .expect("apply");
    let lonely = c.kubectl(&[
        "-n",
        "gone",
        "wait",
        "--for=condition=Ready",
        "pod/lonely",
        "--timeout=90s",
    ]);
    assert!(lonely.contains("condition met"), "{lonely}");
    let ip = c.kubectl(&[
        "-n",
        "gone",
        "get",
        "pod",
        "lonely",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    c.kubectl(&[
        "delete",
        "namespace",
        "gone",
        "--wait=true",
        "--timeout=120s",
    ]);
    c.wait_until("the namespace's VpcIP gone", WAIT, || {
        c.object("vip", &ip).is_none()
    });
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_eni_limit_is_an_event_ownerrefs_cascade_and_the_cluster_component_leads() {
    require_root();
    // Two nodes and a VPC quota of three ENIs: the two primaries and one
    // secondary. One node gets it, the other reports ENILimit.
    let c = Cluster::up_with(2, &["--eni-quota", "3"]);
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    c.wait_until("an ENILimit event on a Node", WAIT, || {
        c.events().lines().any(|l| l.starts_with("ENILimit"))
    });
    let limited: Vec<String> = (1..=2)
        .map(|n| c.get(&format!("NODE{n}_INSTANCE")).to_string())
        .filter(|node| {
            c.object("nec", node).is_some_and(|v| {
                v["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "ENILimit")
            })
        })
        .collect();
    assert_eq!(limited.len(), 1, "exactly one node is past the quota");

    // The cluster component holds its lease.
    c.wait_until("the cluster component leads", WAIT, || {
        c.try_kubectl(
            &[
                "-n",
                &ns,
                "get",
                "lease",
                "vpc-cni-cluster",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .is_ok_and(|h| h.starts_with("vpc-cni-cluster"))
    });

    // Static claims made before ownerrefs are on keep no owner; after, the
    // workload's deletion frees them.
    let healthy = (1..=2)
        .map(|n| c.get(&format!("NODE{n}_INSTANCE")).to_string())
        .find(|n| !limited.contains(n))
        .expect("a node with an ENI");
    let pinned = |name: &str| pin(&sts(name, 1, STATIC), &healthy);
    c.apply(&pinned("before"));
    pod_ip(&c, "before-0");
    c.set_config("enable-ownerref", "true");
    c.apply(&pinned("after"));
    let ip = pod_ip(&c, "after-0");
    c.wait_until("after-0's claim owned by its StatefulSet", WAIT, || {
        c.object("vipc", "after-0").is_some_and(|v| {
            v["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
                && v["metadata"]["ownerReferences"][0]["name"] == "after"
        })
    });
    assert!(
        c.object("vipc", "before-0")
            .is_some_and(|v| v["metadata"]["ownerReferences"].is_null()),
        "a claim made before the flag keeps no owner"
    );
    c.kubectl(&["delete", "statefulset", "after", "before", "--wait=true"]);
    c.wait_until(
        "after-0's claim and IP gone with its workload",
        WAIT,
        || c.object("vipc", "after-0").is_none() && c.object("vip", &ip).is_none(),
    );
    c.wait_until("before-0 Reserved, kept", WAIT, || {
        c.object("vipc", "before-0")
            .is_some_and(|v| s(&v, &["status", "phase"]) == "Reserved")
    });
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_objects_match_the_cloud_after_agents_and_the_cluster_component_die_in_a_churn() {
    require_root();
    let c = Cluster::up(2);
    // One StatefulSet per node: a static IP stays on its node here (moving
    // one between nodes has its own test below).
    let (sets, pods) = pinned_sets(&c, "churn", 2, WAIT);
    let kill = |selector: &str| c.crash_delete(selector);
    for round in 0..3 {
        let (name, _) = &sets[round % 2];
        c.kubectl(&[
            "delete",
            "pod",
            &format!("{name}-{}", round % 2),
            "--wait=false",
        ]);
        kill("app.kubernetes.io/name=vpc-cni-agent");
        c.kubectl(&[
            "scale",
            "statefulset",
            name,
            &format!("--replicas={}", 1 + round % 2),
        ]);
        kill("app.kubernetes.io/name=vpc-cni-cluster");
        std::thread::sleep(Duration::from_secs(2));
    }
    for (name, _) in &sets {
        c.kubectl(&["scale", "statefulset", name, "--replicas=2"]);
    }
    c.rollout_agents("180s");
    for p in &pods {
        c.wait_ready(p, Duration::from_secs(180));
    }
    let mut last = Vec::new();
    let converged = (0..120).any(|_| {
        last = disagreements(&c);
        last.is_empty() || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(
        converged,
        "the objects never matched the cloud and the pods: {last:#?}"
    );
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_an_eni_that_cannot_attach_shows_its_ips_attaching_with_the_error() {
    require_root();
    let c = Cluster::up(1);
    let node = c.get("NODE1_INSTANCE").to_string();
    emulator_post(&c, "/_sim/fail-actions", r#"["AttachNetworkInterface"]"#);
    // The agent publishes its node's object once it runs: wait for it.
    c.wait_until("the node's NodeEniConfig", WAIT, || {
        c.object("nec", &node).is_some()
    });
    // More free IPs than the node's one ENI holds: the agent needs another.
    c.kubectl(&[
        "patch",
        "nec",
        &node,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"warmIpTarget":25}}"#,
    ]);
    let attaching = || {
        items(&c, "vip").iter().any(|vip| {
            s(vip, &["spec", "phase"]) == "Attaching"
                && s(vip, &["spec", "error"]).contains("AttachNetworkInterface")
        })
    };
    c.wait_until("a VpcIP Attaching with the attach's error", WAIT, attaching);
    // The node's object is written after the VpcIPs, in the same round:
    // looked at until it says so too (it failed once read at once).
    c.wait_until("the NodeEniConfig showing an ENI Attaching", WAIT, || {
        c.object("nec", &node).is_some_and(|nec| {
            nec["status"]["enis"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["state"] == "Attaching")
        })
    });
    // The cloud attaches again: the ENI joins the pool and nothing is
    // left attaching.
    emulator_post(&c, "/_sim/fail-actions", "[]");
    c.wait_until(
        "the pool grown to its target",
        Duration::from_secs(120),
        || {
            c.object("nec", &node)
                .is_some_and(|v| v["status"]["free"].as_u64() >= Some(25))
        },
    );
    c.wait_until("no VpcIP attaching", WAIT, || !attaching());
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_static_ip_follows_its_pod_to_another_node_of_its_subnet() {
    require_root();
    let c = Cluster::up(2);
    let node1 = c.get("NODE1_INSTANCE").to_string();
    let node2 = c.get("NODE2_INSTANCE").to_string();
    let pinned = |node: &str| pin(&sts("mover", 1, STATIC), node);
    c.apply(&pinned(&node1));
    let ip = pod_ip(&c, "mover-0");
    c.wait_until("mover-0's claim Bound on node1", WAIT, || {
        c.object("vipc", "mover-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "node"]) == node1
        })
    });

    // The pod is moved to node2 (the same zone, the same subnet).
    c.apply(&pinned(&node2));
    c.wait_until("mover-0 running on node2", WAIT, || {
        c.pod("mover-0").is_some_and(|p| {
            s(&p, &["spec", "nodeName"]) == node2 && s(&p, &["status", "phase"]) == "Running"
        })
    });
    assert_eq!(pod_ip(&c, "mover-0"), ip, "the same IP on the new node");
    c.wait_until("the claim and the VpcIP say node2", WAIT, || {
        c.object("vipc", "mover-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound"
                && s(&v, &["status", "node"]) == node2
                && s(&v, &["status", "ip"]) == ip
        }) && c.object("vip", &ip).is_some_and(|v| {
            s(&v, &["spec", "phase"]) == "Bound" && s(&v, &["spec", "node"]) == node2
        })
    });
    // In the cloud the address is on exactly one ENI, node2's.
    let world: Value = serde_json::from_str(
        &std::fs::read_to_string(c.state().join("vpc.json")).expect("world file"),
    )
    .expect("world json");
    let on: Vec<(&String, &Value)> = world["vpc"]["enis"]
        .as_object()
        .expect("enis")
        .iter()
        .filter(|(_, e)| {
            e["secondary_ips"]
                .as_array()
                .is_some_and(|ips| ips.iter().any(|i| i == ip.as_str()))
        })
        .collect();
    assert_eq!(on.len(), 1, "on one ENI: {on:?}");
    assert_eq!(on[0].1["attached_to"].as_str(), Some(node2.as_str()));
    // The fabric delivers the moved address to node2: the pod reaches its
    // subnet's gateway and the answer comes back to it there.
    c.wait_until("mover-0 pings its gateway from node2", WAIT, || {
        c.try_kubectl(
            &[
                "exec",
                "mover-0",
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                "10.0.16.1",
            ],
            None,
        )
        .is_ok()
    });
    // node1's agent forgot it; node2's holds it.
    c.wait_until("node1's pool no longer lists it", WAIT, || {
        !c.pool(1)
            .enis
            .iter()
            .any(|e| e.ips.iter().any(|i| i.ip.to_string() == ip))
    });
    assert!(
        c.pool(2)
            .enis
            .iter()
            .any(|e| e.ips.iter().any(|i| i.ip.to_string() == ip)),
        "node2's pool has it"
    );
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });

    // And back: the claim moves again, to node1.
    c.apply(&pinned(&node1));
    c.wait_until("mover-0 running on node1 again", WAIT, || {
        c.pod("mover-0").is_some_and(|p| {
            s(&p, &["spec", "nodeName"]) == node1 && s(&p, &["status", "phase"]) == "Running"
        })
    });
    assert_eq!(pod_ip(&c, "mover-0"), ip, "the same IP back on node1");
    c.wait_until("the claim says node1 again", WAIT, || {
        c.object("vipc", "mover-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "node"]) == node1
        })
    });
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });
}
