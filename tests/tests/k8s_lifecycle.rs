//! Privileged: the life of claims and ENIs on a real cluster
//! (`vpc-sim up --kubernetes`, vpc-cni from `deploy/`) when things die or
//! time passes: the API server SIGKILLed at random moments of a churn, a
//! reserved static IP expiring, and the cluster component sweeping up
//! after a node that is gone (a static pod leaving a drained or deleted
//! node is in `k8s_moves.rs`).
//!
//! Test-only settings (the agent's clock offset file and maintenance tick,
//! the cluster component's sweep interval and grace) are patched into the
//! running DaemonSet and Deployment here, never into `deploy/`.

use std::time::{Duration, Instant};

use serde_json::Value;
use vpc_cni_tests::k8s::{
    Cluster, Rng, STATIC, cloud_enis, disagreements, emulator_post, enis_holding, field as s,
    items, pin, pinned_sets, pod, sts,
};
use vpc_cni_tests::require_root;

const WAIT: Duration = Duration::from_secs(90);
const EXPIRES_5M: &str = "tke.cloud.tencent.com/vpc-ip-claim-expired-duration: 5m";

fn phase_is(c: &Cluster, claim: &str, phase: &str) -> bool {
    c.object("vipc", claim)
        .is_some_and(|v| s(&v, &["status", "phase"]) == phase)
}

/// A JSON patch appending `args` to the first container's arguments.
fn add_args(args: &[&str]) -> String {
    let ops: Vec<Value> = args
        .iter()
        .map(|a| {
            serde_json::json!({
                "op": "add",
                "path": "/spec/template/spec/containers/0/args/-",
                "value": a,
            })
        })
        .collect();
    Value::Array(ops).to_string()
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_objects_match_the_cloud_after_the_api_server_dies_in_a_churn() {
    require_root();
    let c = Cluster::up(2);
    let (sets, pods) = pinned_sets(&c, "api", 2, WAIT);

    // The moments: when each API server kill comes (after the previous
    // one is ready again) and how long it stays down; the pauses between
    // the churn's rounds.
    let mut rng = Rng::seeded();
    let kills: Vec<(u64, u64)> = (0..3)
        .map(|_| (rng.below(2_500), rng.below(3_000)))
        .collect();
    let pauses: Vec<u64> = (0..4).map(|_| rng.below(1_500)).collect();
    let retry = Duration::from_secs(120);
    let started = Instant::now();
    let said = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            kills
                .iter()
                .map(|&(wait, down)| {
                    std::thread::sleep(Duration::from_millis(wait));
                    c.restart("kube-apiserver", Duration::from_millis(down))
                })
                .collect::<Vec<String>>()
        });
        let kill = |selector: &str| c.crash_delete(selector);
        for (round, pause) in pauses.iter().enumerate() {
            let (name, _) = &sets[round % 2];
            c.kubectl_retry(
                &[
                    "delete",
                    "pod",
                    &format!("{name}-{}", round % 2),
                    "--wait=false",
                    "--ignore-not-found",
                ],
                retry,
            );
            kill("app.kubernetes.io/name=vpc-cni-agent");
            c.kubectl_retry(
                &[
                    "scale",
                    "statefulset",
                    name,
                    &format!("--replicas={}", 1 + round % 2),
                ],
                retry,
            );
            kill("app.kubernetes.io/name=vpc-cni-cluster");
            std::thread::sleep(Duration::from_millis(*pause));
        }
        killer.join().expect("the killer thread")
    });
    for line in &said {
        assert!(
            line.contains("killed (pid"),
            "the API server was running: {line}"
        );
        eprintln!("{line}");
    }
    eprintln!("churn with 3 API server kills: {:?}", started.elapsed());
    for (name, _) in &sets {
        c.kubectl_retry(&["scale", "statefulset", name, "--replicas=2"], retry);
    }
    c.wait_agents_rolled_out();
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
    // Every static pod is back with a claim on its node.
    for (name, node) in &sets {
        for i in 0..2 {
            let claim = format!("{name}-{i}");
            let v = c.object("vipc", &claim).expect("claim");
            assert_eq!(s(&v, &["status", "phase"]), "Bound", "{v}");
            assert_eq!(s(&v, &["status", "node"]), node, "{v}");
        }
    }
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_a_reserved_static_ip_expires_and_returns_to_the_pool() {
    require_root();
    let c = Cluster::up(1);
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    // Test-only: the agent's clock runs ahead by the milliseconds in a file
    // on the node (in its state hostPath), and its maintenance ticks every
    // second.
    let offset_on_node = "/var/lib/vpc-cni/test-clock-offset";
    let offset = c
        .state()
        .join("k8s/node1/root")
        .join(offset_on_node.trim_start_matches('/'));
    c.kubectl(&[
        "-n",
        &ns,
        "patch",
        "daemonset",
        "vpc-cni-agent",
        "--type",
        "json",
        "-p",
        &add_args(&[
            &format!("--test-clock-offset-file={offset_on_node}"),
            "--maintenance-interval=1s",
        ]),
    ]);
    c.rollout_agents("120s");

    c.apply(&sts("exp", 1, &format!("{STATIC}, {EXPIRES_5M}")));
    let ip = c.pod_ip("exp-0", WAIT);
    c.wait_until("exp-0's claim Bound", WAIT, || {
        phase_is(&c, "exp-0", "Bound")
    });
    c.kubectl(&["scale", "statefulset", "exp", "--replicas=0"]);
    c.wait_until("exp-0 Reserved with an expiry", WAIT, || {
        c.object("vipc", "exp-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Reserved" && !s(&v, &["status", "expiresAt"]).is_empty()
        })
    });
    // Several maintenance ticks later, it is still there: not expired.
    c.wait_for_rounds(1, 3, WAIT);
    assert!(
        phase_is(&c, "exp-0", "Reserved"),
        "not expired before its time"
    );
    assert!(c.object("vip", &ip).is_some());

    // Six minutes pass for the agent.
    std::fs::write(&offset, "360000").expect("write the clock offset");
    c.wait_until("exp-0's claim and VpcIP gone", WAIT, || {
        c.object("vipc", "exp-0").is_none() && c.object("vip", &ip).is_none()
    });
    c.wait_until("a Released event saying it expired", WAIT, || {
        c.events()
            .lines()
            .any(|l| l.starts_with("Released") && l.contains(&ip) && l.contains("expired"))
    });
    // The address is back in the node's pool (cooling or free) on the ENI
    // that holds it in the cloud, or given back to the cloud.
    let in_pool = c.pool(1).enis.iter().find_map(|e| {
        e.ips
            .iter()
            .find(|i| i.ip.to_string() == ip)
            .map(|i| (e.id.clone(), i.state.clone()))
    });
    let holders = enis_holding(&c, &ip);
    match in_pool {
        Some((eni, state)) => {
            assert!(
                matches!(
                    state,
                    proto::wire::IpState::Cooling { .. } | proto::wire::IpState::Free
                ),
                "{ip} is {state:?}"
            );
            assert_eq!(holders, [eni], "on the pool's ENI in the cloud");
        }
        None => assert!(holders.is_empty(), "{ip} still on {holders:?}"),
    }
    c.wait_until("the objects match the cloud and the pods", WAIT, || {
        disagreements(&c).is_empty()
    });
    // The next exp-0 gets a claim anew.
    c.kubectl(&["scale", "statefulset", "exp", "--replicas=1"]);
    let again = c.pod_ip("exp-0", WAIT);
    c.wait_until("a new claim for exp-0", WAIT, || {
        c.object("vipc", "exp-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "ip"]) == again
        })
    });
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_the_cluster_component_sweeps_up_after_a_node_that_is_gone() {
    require_root();
    let c = Cluster::up(2);
    let ns = c.get("VPC_CNI_NAMESPACE").to_string();
    let node1 = c.get("NODE1_INSTANCE").to_string();
    let node2 = c.get("NODE2_INSTANCE").to_string();
    // Test-only: the cluster component sweeps every 2 s with a 10 s grace,
    // and runs on node1 alone (node2 is about to go; its replicas use the
    // host's ports, so one a node).
    let mut patch: Value =
        serde_json::from_str(&add_args(&["--interval=2s", "--leaked-eni-grace=10s"]))
            .expect("patch");
    let ops = patch.as_array_mut().expect("ops");
    ops.push(serde_json::json!({
        "op": "add",
        "path": "/spec/template/spec/nodeSelector",
        "value": {"kubernetes.io/hostname": node1},
    }));
    ops.push(serde_json::json!({ "op": "replace", "path": "/spec/replicas", "value": 1 }));
    c.kubectl(&[
        "-n",
        &ns,
        "patch",
        "deployment",
        "vpc-cni-cluster",
        "--type",
        "json",
        "-p",
        &patch.to_string(),
    ]);
    c.kubectl(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/vpc-cni-cluster",
        "--timeout=120s",
    ]);

    // On node2: a static pod kept forever, one that expires, one whose
    // claim will be deleted by hand (all three scaled to zero: reserved),
    // and a plain pod running when the node goes.
    let on2 = |name: &str, annotations: &str| pin(&sts(name, 1, annotations), &node2);
    c.apply(&on2("kept", STATIC));
    c.apply(&on2("expiring", &format!("{STATIC}, {EXPIRES_5M}")));
    c.apply(&on2("deleted", STATIC));
    c.apply(&pod("plain", "").replace(
        "spec:\n  terminationGracePeriodSeconds",
        &format!("spec:\n  nodeName: {node2}\n  terminationGracePeriodSeconds"),
    ));
    let ip = |p: &str| c.pod_ip(p, WAIT);
    let (kept, expiring, deleted, plain) =
        (ip("kept-0"), ip("expiring-0"), ip("deleted-0"), ip("plain"));
    c.wait_until("plain's claim Bound", WAIT, || {
        phase_is(&c, "plain", "Bound")
    });
    for set in ["kept", "expiring", "deleted"] {
        c.kubectl(&["scale", "statefulset", set, "--replicas=0"]);
    }
    for claim in ["kept-0", "expiring-0", "deleted-0"] {
        c.wait_until(&format!("{claim} Reserved"), WAIT, || {
            phase_is(&c, claim, "Reserved")
        });
    }
    let secondary: Vec<String> = cloud_enis(&c)
        .into_iter()
        .filter(|(_, e)| e["attached_to"] == node2.as_str() && e["primary"] != true)
        .map(|(id, _)| id)
        .collect();
    assert!(!secondary.is_empty(), "node2 has secondary ENIs");

    // node2 goes: switched off, its Node deleted, its instance released
    // (its secondary ENIs detached, as the cloud leaves them).
    c.power_off(2);
    c.kubectl(&["delete", "node", &node2, "--wait=true"]);
    let detached: Vec<String> = serde_json::from_str(&emulator_post(
        &c,
        "/_sim/release-instance",
        &format!("\"{node2}\""),
    ))
    .expect("ids");
    let mut want = secondary.clone();
    want.sort();
    let mut got = detached;
    got.sort();
    assert_eq!(got, want, "the instance's secondary ENIs detached");
    // Time passes past expiring-0's expiry (no node is left to write it),
    // and an operator deletes deleted-0's claim.
    c.kubectl(&[
        "patch",
        "vipc",
        "expiring-0",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"expiresAt":"2001-01-01T00:00:00Z"}}"#,
    ]);
    c.kubectl(&["delete", "vipc", "deleted-0", "--wait=false"]);

    c.wait_until("the gone node's ENIs deleted in the cloud", WAIT, || {
        let enis = cloud_enis(&c);
        secondary.iter().all(|id| !enis.contains_key(id))
    });
    for (claim, ip) in [
        ("expiring-0", &expiring),
        ("deleted-0", &deleted),
        ("plain", &plain),
    ] {
        c.wait_until(&format!("{claim}'s claim and VpcIP released"), WAIT, || {
            c.object("vipc", claim).is_none() && c.object("vip", ip).is_none()
        });
        assert!(enis_holding(&c, ip).is_empty(), "{ip} left in the cloud");
    }
    // A static claim that never expires stays, for its pod to come back.
    let v = c.object("vipc", "kept-0").expect("kept-0 is kept");
    assert_eq!(s(&v, &["status", "ip"]), kept, "{v}");
    assert_eq!(s(&v, &["status", "node"]), node2, "{v}");
    // Its ENI went with the node (the address back in the subnet); its
    // pod, started on node1, takes the address there by name.
    assert!(
        enis_holding(&c, &kept).is_empty(),
        "{kept} went with its ENI"
    );
    c.apply(&pin(&sts("kept", 1, STATIC), &node1));
    assert_eq!(
        c.pod_ip("kept-0", WAIT),
        kept,
        "kept-0 back with its IP on node1"
    );
    c.wait_until("kept-0's claim Bound on node1", WAIT, || {
        c.object("vipc", "kept-0").is_some_and(|v| {
            s(&v, &["status", "phase"]) == "Bound" && s(&v, &["status", "node"]) == node1
        })
    });
    c.wait_until(&format!("{kept} on one ENI, node1's"), WAIT, || {
        let on = enis_holding(&c, &kept);
        on.len() == 1 && cloud_enis(&c)[&on[0]]["attached_to"] == node1.as_str()
    });
    // Nothing else is claimed twice or left without its object.
    let vips = items(&c, "vip");
    for claim in items(&c, "vipc") {
        let ip = s(&claim, &["status", "ip"]);
        assert!(
            vips.iter().any(|v| s(v, &["metadata", "name"]) == ip),
            "claim {} points at {ip}, which has no VpcIP",
            s(&claim, &["metadata", "name"])
        );
    }
}

/// The pid `vpc-sim` records for the cluster's process `name`.
fn recorded_pid(c: &Cluster, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(c.state().join("k8s").join("cluster.json")).ok()?;
    let cluster: Value = serde_json::from_str(&text).ok()?;
    cluster["procs"]
        .as_array()?
        .iter()
        .rev()
        .find(|p| p["name"] == name)
        .and_then(|p| p["pid"].as_u64())
        .map(|p| p as u32)
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

#[test]
#[cfg_attr(
    not(privileged),
    ignore = "needs root (or VPC_CNI_PRIVILEGED=1 at build)"
)]
fn k8s_an_exited_scheduler_and_controller_manager_are_started_again() {
    require_root();
    let c = Cluster::up(1);
    // As a real control-plane node's kubelet restarts its static pods: the
    // scheduler exits on its own after API-server restarts ("Scheduler
    // cache is corrupted"), and nothing would be scheduled again.
    for name in ["kube-scheduler", "kube-controller-manager"] {
        let old = recorded_pid(&c, name).expect("recorded");
        assert!(running(old), "{name} runs");
        let killed = std::process::Command::new("kill")
            .args(["-9", &old.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {old}");
        c.wait_until(&format!("{name} started again"), WAIT, || {
            recorded_pid(&c, name).is_some_and(|new| new != old && running(new))
        });
    }
    // Both work: a pod is scheduled and becomes Ready; a Deployment (the
    // controller manager's) makes its pod.
    c.apply(&pod("after", ""));
    c.wait_ready("after", WAIT);
    c.kubectl(&[
        "create",
        "deployment",
        "made",
        "--image=localhost/busybox:1.35",
        "--",
        "sleep",
        "3600",
    ]);
    c.wait_until("the Deployment's pod exists", WAIT, || {
        items(&c, "pods")
            .iter()
            .any(|p| s(p, &["metadata", "name"]).starts_with("made-"))
    });
}
