//! `move-churn`: a churn campaign for static IPs moving between nodes. A
//! static StatefulSet pod on a two-node `vpc-sim up --kubernetes` cluster
//! is moved to the other node N times (its `nodeName` pinned, the pod
//! deleted); during each move, at random moments (seeded; the seed is
//! printed and `VPC_CNI_CHURN_SEED` replays it), both agents and the
//! cluster component (the cloud gateway the moves go through) are
//! crash-deleted and the API server is killed and kept down a while. Each
//! move must end with the pod Ready on the other node with its IP, the
//! address on exactly one ENI (the new node's); at the end every object
//! must match the cloud. Meanwhile plain pods on the node the static pod
//! leaves are deleted and made again (they ask that node for addresses
//! while its claim is between nodes), and a watcher checks twice a second,
//! not only at the end, that no address is on two ENIs and no two pods
//! hold one address. On a stuck move it prints the pod, claim, `VpcIP`,
//! events and both agents' last log lines.
//!
//!   bench/move-churn [--rounds 4]
//!
//! Root; run by `bench/move-churn`, outside the suite: it is a campaign
//! that looks for rare interleavings. A pod the StatefulSet controller
//! makes again from its template before the pin (its cache behind the API
//! server's restart), on the node it left, is deleted again and the move
//! goes on: that is the controller's doing, and the agents' state is
//! right for it (the pod runs there with its IP). Likewise a node left
//! without its agent pod, or a cluster component pod left on no node, for
//! 30 s (the DaemonSet controller stalled, or kube-scheduler exited, after
//! the API server's restart) gets both started again.

use std::io::Write;
use std::time::{Duration, Instant};

use vpc_cni_tests::k8s::{
    Cluster, Rng, STATIC, cloud_enis, disagreements, enis_holding, field as s, items, pin, ready,
    sts,
};

/// The cluster component's pods.
const CLUSTER: &str = "app.kubernetes.io/name=vpc-cni-cluster";

const WAIT: Duration = Duration::from_secs(90);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = match args.as_slice() {
        [] => 4,
        [flag, n] if flag == "--rounds" => n.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    run(rounds);
    let _ = writeln!(
        std::io::stdout(),
        "PASS: {rounds} moves, each ending on one ENI of the new node, every object matching the cloud"
    );
}

fn usage() -> usize {
    eprintln!("usage: move-churn [--rounds N]");
    std::process::exit(2)
}

fn run(rounds: usize) {
    let c = Cluster::up(2);
    let nodes = [
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    ];
    let retry = Duration::from_secs(120);
    let apply = |manifest: &str| {
        let deadline = Instant::now() + retry;
        while let Err(e) = c.try_kubectl(&["apply", "-f", "-"], Some(manifest)) {
            assert!(Instant::now() < deadline, "kubectl apply: {e}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    apply(&pin(&sts("mover", 1, STATIC), &nodes[0]));
    let ip = c.pod_ip("mover-0", WAIT);
    let mut rng = Rng::seeded();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let violations = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|outer| {
        outer.spawn(|| watch(&c, &stop, &violations));
        // Set when the moves end, a failed one (a panic) included: the
        // scope waits for the watcher, and the simulation is taken down
        // only after it.
        let _stop = StopOnDrop(&stop);
        moves(&c, &nodes, rounds, &ip, &mut rng, &apply);
    });
    let seen = violations.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        seen.is_empty(),
        "the invariants broke during the churn:\n{}",
        seen.join("\n")
    );
    c.wait_until(
        "the objects match the cloud and the pods",
        Duration::from_secs(120),
        || disagreements(&c).is_empty(),
    );
}

/// Raises its flag when dropped, also while a panic unwinds.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Twice a second until `stop`: no address on two ENIs, no two running
/// pods with one address; each broken invariant is recorded once.
fn watch(
    c: &Cluster,
    stop: &std::sync::atomic::AtomicBool,
    violations: &std::sync::Mutex<Vec<String>>,
) {
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut found = Vec::new();
        let mut on = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (id, eni) in cloud_enis(c) {
            for ip in eni["secondary_ips"].as_array().into_iter().flatten() {
                on.entry(ip.as_str().unwrap_or_default().to_string())
                    .or_default()
                    .push(id.clone());
            }
        }
        for (ip, enis) in on.iter().filter(|(_, e)| e.len() > 1) {
            found.push(format!("{ip} on ENIs {enis:?}"));
        }
        let mut held = std::collections::BTreeMap::<String, String>::new();
        for pod in items(c, "pods") {
            let ip = s(&pod, &["status", "podIP"]).to_string();
            if ip.is_empty()
                || pod["spec"]["hostNetwork"] == true
                || pod["status"]["phase"] != "Running"
            {
                continue;
            }
            let name = s(&pod, &["metadata", "name"]).to_string();
            if let Some(other) = held.insert(ip.clone(), name.clone()) {
                found.push(format!("{ip} held by pods {other} and {name}"));
            }
        }
        let mut v = violations.lock().unwrap_or_else(|p| p.into_inner());
        for f in found {
            if !v.contains(&f) {
                let _ = writeln!(std::io::stdout(), "VIOLATION: {f}");
                v.push(f);
            }
        }
        drop(v);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn moves(
    c: &Cluster,
    nodes: &[String; 2],
    rounds: usize,
    ip: &str,
    rng: &mut Rng,
    apply: &dyn Fn(&str),
) {
    // Each move: the pod pinned to the other node and deleted, while at
    // random moments both agents and the cluster component are
    // crash-deleted and the API server is killed and kept down a while.
    for round in 1..=rounds {
        let to = &nodes[round % 2];
        let from = &nodes[(round + 1) % 2];
        let (agents_at, api_at, down) = (rng.below(1_500), rng.below(2_000), rng.below(2_500));
        let gateway_at = rng.below(1_500);
        // Plain pods on the node the claim leaves, asking it for addresses
        // while the move runs.
        apply(&pin(&sts("asker", 3, ""), from));
        std::thread::scope(|scope| {
            let killer = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(api_at));
                c.restart("kube-apiserver", Duration::from_millis(down))
            });
            apply(&pin(&sts("mover", 1, STATIC), to));
            force_delete_mover(c);
            let _ = c.try_kubectl(
                &[
                    "delete",
                    "pod",
                    "-l",
                    "app=asker",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ],
                None,
            );
            let gateway = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(gateway_at));
                c.crash_delete(CLUSTER);
            });
            std::thread::sleep(Duration::from_millis(agents_at));
            c.crash_delete("app.kubernetes.io/name=vpc-cni-agent");
            gateway.join().expect("the gateway killer thread");
            let said = killer.join().expect("the killer thread");
            let _ = writeln!(std::io::stdout(), "move {round}: {}", said.trim());
        });
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut redeleted = None::<Instant>;
        let (mut agentless_since, mut kcm_restarted) = (None::<Instant>, None::<Instant>);
        loop {
            let pod = c.pod("mover-0");
            let node = pod
                .as_ref()
                .map(|p| s(p, &["spec", "nodeName"]).to_string());
            if pod.as_ref().is_some_and(ready) && node.as_deref() == Some(to.as_str()) {
                break;
            }
            // The StatefulSet controller, its cache behind the API server's
            // restart, may make the pod again from the template before the
            // pin (on the node it left, where it runs with its IP as it
            // should); and it rolls it only later, or not at all. That is
            // Kubernetes' doing, not a stuck move: delete it again.
            if let Some(node) = node.filter(|n| !n.is_empty() && n != to)
                && redeleted.is_none_or(|at| at.elapsed() > Duration::from_secs(20))
            {
                redeleted = Some(Instant::now());
                let _ = writeln!(
                    std::io::stdout(),
                    "move {round}: the StatefulSet made mover-0 again on {node} (its template before the pin); deleting it again"
                );
                force_delete_mover(c);
            }
            // The DaemonSet controller can stall after the API server's
            // restart (a pod it created as the server died counts as
            // expected until a 5-minute timeout), and kube-scheduler was
            // seen to exit ("Scheduler cache is corrupted"), which nothing
            // in the simulation restarts: a node left without its agent
            // for 30 s gets both started again, as a node's supervisor
            // would. Kubernetes' doing too, not a stuck move. So does a
            // cluster component pod left unscheduled for 30 s (a 50-move
            // run stuck at move 29 with both replicas Pending on no node
            // for 3 minutes, no gateway serving, the scheduler gone).
            if (1..=2).any(|n| c.try_agent_pod(n).is_err()) || unscheduled(c) {
                let since = *agentless_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(30)
                    && kcm_restarted.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
                {
                    kcm_restarted = Some(Instant::now());
                    for component in ["kube-controller-manager", "kube-scheduler"] {
                        let said = c.restart(component, Duration::ZERO);
                        let _ = writeln!(
                            std::io::stdout(),
                            "move {round}: a node without its agent pod, or a cluster component pod unscheduled, for 30 s; {}",
                            said.trim()
                        );
                    }
                }
            } else {
                agentless_since = None;
            }
            if Instant::now() > deadline {
                let show = |args: &[&str]| c.try_kubectl(args, None).unwrap_or_else(|e| e);
                panic!(
                    "mover-0 not Ready on {to} within 240 s (move {round})\n\
                     pod: {}\nStatefulSet: {}\nclaim: {}\nVpcIP: {}\nevents:\n{}\nagent 1:\n{}\nagent 2:\n{}\n\
                     the cluster component's pods:\n{}\ntheir logs (the previous container's first):\n{}\n{}",
                    show(&["get", "pod", "mover-0", "-o", "wide"]),
                    show(&["get", "sts", "mover", "-o", "jsonpath={.status}"]),
                    show(&["get", "vipc", "mover-0", "-o", "yaml"]),
                    show(&["get", "vip", ip, "-o", "yaml"]),
                    c.events(),
                    tail(&c.agent_log(1), 40),
                    tail(&c.agent_log(2), 40),
                    show(&[
                        "-n",
                        "vpc-cni-system",
                        "get",
                        "pods",
                        "-l",
                        CLUSTER,
                        "-o",
                        "wide"
                    ]),
                    tail(
                        &show(&[
                            "-n",
                            "vpc-cni-system",
                            "logs",
                            "-l",
                            CLUSTER,
                            "--previous",
                            "--tail=30",
                            "--prefix",
                        ]),
                        60
                    ),
                    tail(
                        &show(&[
                            "-n",
                            "vpc-cni-system",
                            "logs",
                            "-l",
                            CLUSTER,
                            "--tail=30",
                            "--prefix",
                        ]),
                        60
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(c.pod_ip("mover-0", WAIT), ip, "move {round}: the same IP");
        c.wait_until(
            &format!("{ip} on exactly one ENI, {to}'s (move {round})"),
            Duration::from_secs(120),
            || {
                let holders = enis_holding(c, ip);
                holders.len() == 1
                    && cloud_enis(c)[holders[0].as_str()]["attached_to"].as_str()
                        == Some(to.as_str())
            },
        );
    }
}

/// `kubectl delete pod mover-0 --force`, not waiting; a failure (the API
/// server down) is the churn's own doing and is not checked.
fn force_delete_mover(c: &Cluster) {
    let _ = c.try_kubectl(
        &[
            "delete",
            "pod",
            "mover-0",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a pod of the cluster component has no node yet.
fn unscheduled(c: &Cluster) -> bool {
    c.try_kubectl(
        &[
            "-n",
            "vpc-cni-system",
            "get",
            "pods",
            "-l",
            CLUSTER,
            "-o",
            "jsonpath={range .items[*]}[{.spec.nodeName}]{end}",
        ],
        None,
    )
    .is_ok_and(|nodes| nodes.contains("[]"))
}
