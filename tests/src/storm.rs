//! The fault storm: several nodes' agents against one emulator that
//! throttles, fails, delays and loses answers after applying them; pods
//! (static and plain) churning through the real plugin on every node, with
//! kubelet's retries; agents SIGKILLed at random. Afterwards, every count is
//! taken through the VPC API (the emulator's world) and through each agent.
//! `tests/tests/storm.rs` runs a short storm; `bench/fault-storm` a long one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::wire::{IpState, Request, Response};
use serde_json::{Value, json};

use crate::{CniEnv, Emulator, cni, pod_address, spawn_agent, wait_ready};

/// How hard the storm blows.
#[derive(Clone, Debug)]
pub struct Options {
    /// Simulated nodes, one agent each.
    pub nodes: usize,
    /// How long pods churn.
    pub duration: Duration,
    /// Latency the emulator adds to every call.
    pub latency: Duration,
    /// Share of calls answered `RequestLimitExceeded`.
    pub throttle_rate: f64,
    /// Share of calls answered `InternalError`.
    pub error_rate: f64,
    /// One in this many mutating calls is applied and its answer lost.
    pub drop_every: u64,
    /// Mean time between two agent kills.
    pub kill_every: Duration,
    /// Seed of the storm's choices.
    pub seed: u64,
    /// How long the agents may take to agree with the cloud afterwards.
    pub settle_within: Duration,
}

/// What the storm did and what was counted after it.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// ADDs answered with an IP.
    pub adds: usize,
    /// ADDs that failed (the sandbox was then DELeted, as kubelet does).
    pub failed_adds: usize,
    /// DELs answered.
    pub dels: usize,
    /// Agents killed.
    pub kills: usize,
    /// Times a static pod came back, each with its own IP.
    pub static_returns: usize,
    /// Pods running at the end.
    pub running: usize,
    /// Secondary ENIs in the VPC at the end, and how many are attached nowhere.
    pub enis: (usize, usize),
    /// Secondary IPs in the VPC at the end, and how many no agent knows of.
    pub ips: (usize, usize),
    /// Everything found wrong (empty for a clean storm).
    pub violations: Vec<String>,
    /// How long the agents took to agree with the cloud after the churn.
    pub settle: Duration,
}

impl Report {
    /// The counts, one per line.
    pub fn table(&self) -> String {
        let rows = [
            ("ADDs answered", self.adds.to_string()),
            ("ADDs failed (then DELed)", self.failed_adds.to_string()),
            ("DELs answered", self.dels.to_string()),
            ("agents killed", self.kills.to_string()),
            (
                "static pods back with their IP",
                self.static_returns.to_string(),
            ),
            ("pods running at the end", self.running.to_string()),
            (
                "secondary ENIs / unattached",
                format!("{} / {}", self.enis.0, self.enis.1),
            ),
            (
                "secondary IPs / unknown to agents",
                format!("{} / {}", self.ips.0, self.ips.1),
            ),
            ("settled in", format!("{:.1} s", self.settle.as_secs_f64())),
            ("violations", self.violations.len().to_string()),
        ];
        let mut out: Vec<String> = rows.iter().map(|(k, v)| format!("{k:<36} {v}")).collect();
        out.extend(self.violations.iter().map(|v| format!("  ! {v}")));
        out.join("\n")
    }
}

struct Node {
    dir: tempfile::TempDir,
    instance: usize,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
}

const FLAGS: &[&str] = &[
    "--warm-ip-target",
    "2",
    "--ip-cooldown",
    "0s",
    "--leaked-eni-grace",
    "20s",
    "--reconcile-interval",
    "2s",
    "--cloud-timeout",
    "5s",
];

/// Runs a storm.
pub fn run(o: &Options) -> Report {
    let latency = o.latency.as_millis().to_string();
    let (throttle, error, drop_every) = (
        o.throttle_rate.to_string(),
        o.error_rate.to_string(),
        o.drop_every.to_string(),
    );
    let emulator = Emulator::start(
        o.nodes,
        &[
            "--max-enis",
            "4",
            "--ips-per-eni",
            "10",
            "--latency-ms",
            &latency,
            "--throttle-rate",
            &throttle,
            "--error-rate",
            &error,
            "--drop-responses",
            "CreateNetworkInterface,AttachNetworkInterface,DetachNetworkInterface,\
             DeleteNetworkInterface,AssignPrivateIpAddresses,UnassignPrivateIpAddresses",
            "--drop-every",
            &drop_every,
        ],
    );
    let flags: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
    let nodes: Vec<Arc<Mutex<Node>>> = (1..=o.nodes)
        .map(|instance| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut child = spawn_agent(dir.path(), &emulator, instance, &flags);
            wait_ready(
                &dir.path().join("agent.sock"),
                Some(&mut child),
                &dir.path().join("agent.log"),
            );
            Arc::new(Mutex::new(Node {
                dir,
                instance,
                child: Some(child),
            }))
        })
        .collect();
    let report = Arc::new(Mutex::new(Report::default()));
    let running: Arc<Mutex<Vec<BTreeMap<String, String>>>> =
        Arc::new(Mutex::new(vec![BTreeMap::new(); o.nodes]));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + o.duration;
    std::thread::scope(|s| {
        for (i, node) in nodes.iter().enumerate() {
            let (report, running) = (Arc::clone(&report), Arc::clone(&running));
            let socket = lock(node).socket();
            let seed = o.seed ^ ((i as u64 + 1) * 0x9e37_79b9);
            s.spawn(move || churn(i, &socket, seed, deadline, &report, &running));
        }
        let (stop, kills) = (Arc::clone(&stop), Arc::clone(&kills));
        let nodes = &nodes;
        let emulator = &emulator;
        let flags = &flags;
        let mut rng = Rng(o.seed | 1);
        let kill_every = o.kill_every;
        s.spawn(move || {
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                let pause = kill_every.mul_f64(0.5 + rng.unit());
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                if Instant::now() >= deadline {
                    break;
                }
                let node = &nodes[rng.below(nodes.len())];
                let mut n = lock(node);
                if let Some(mut c) = n.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                    kills.fetch_add(1, Ordering::SeqCst);
                }
                drop(n);
                std::thread::sleep(Duration::from_millis(200 + rng.below(800) as u64));
                let mut n = lock(node);
                let child = spawn_agent(n.dir.path(), emulator, n.instance, flags);
                n.child = Some(child);
            }
        });
    });
    stop.store(true, Ordering::SeqCst);
    let mut report = Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default();
    report.kills = kills.load(Ordering::SeqCst);
    for node in &nodes {
        let mut n = lock(node);
        let socket = n.socket();
        let log = n.dir.path().join("agent.log");
        wait_ready(&socket, n.child.as_mut(), &log);
    }
    let running = lock(&running).clone();
    report.running = running.iter().map(BTreeMap::len).sum();
    let settle_started = Instant::now();
    let settled_by = settle_started + o.settle_within;
    loop {
        let violations = check(&emulator, &nodes, &running, &mut report);
        if violations.is_empty() || Instant::now() > settled_by {
            report.violations.extend(violations);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    report.settle = settle_started.elapsed();
    for node in &nodes {
        if let Some(mut c) = lock(node).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    report
}

/// One node's kubelet: ADD and DEL sandboxes of static and plain pods,
/// retrying as kubelet does while the agent is down.
fn churn(
    node: usize,
    socket: &std::path::Path,
    seed: u64,
    deadline: Instant,
    report: &Mutex<Report>,
    running: &Mutex<Vec<BTreeMap<String, String>>>,
) {
    let mut rng = Rng(seed | 1);
    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "storm", "type": "vpc-cni",
        "agentSocket": socket, "timeoutSeconds": 30,
    }))
    .expect("json");
    let netns = tempfile::NamedTempFile::new().expect("netns stand-in");
    let netns = netns.path().display().to_string();
    // sandbox → (pod, static)
    let mut sandboxes: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut first_ip: BTreeMap<String, String> = BTreeMap::new();
    let mut serial = 0;
    let call = |verb: &str, sandbox: &str, pod: &str, is_static: bool| {
        let mut args = format!("K8S_POD_NAMESPACE=storm;K8S_POD_NAME={pod}");
        if is_static {
            args.push_str(";VPC_IP_CLAIM_DELETE_POLICY=Never");
        }
        let env = CniEnv::pod(verb, sandbox, &netns).set("CNI_ARGS", &args);
        cni(&env, &conf)
    };
    // DEL until answered: kubelet never gives up on a DEL.
    let del = |sandbox: &str, pod: &str, is_static: bool| {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if call("DEL", sandbox, pod, is_static).ok || Instant::now() > until {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    while Instant::now() < deadline {
        let add = sandboxes.len() < 3 || (sandboxes.len() < 8 && rng.unit() < 0.55);
        if add {
            let is_static = rng.unit() < 0.4;
            let pod = if is_static {
                format!("st-{node}-{}", rng.below(3))
            } else {
                serial += 1;
                format!("pl-{node}-{serial}")
            };
            if sandboxes.values().any(|(p, _)| *p == pod) {
                continue;
            }
            serial += 1;
            let sandbox = format!("n{node}s{serial}");
            let run = call("ADD", &sandbox, &pod, is_static);
            if run.ok {
                let ip = pod_address(&run.json());
                let mut r = lock(report);
                r.adds += 1;
                if is_static {
                    match first_ip.get(&pod) {
                        Some(was) if *was != ip => r
                            .violations
                            .push(format!("static pod {pod} came back with {ip}, not {was}")),
                        Some(_) => r.static_returns += 1,
                        None => {
                            first_ip.insert(pod.clone(), ip.clone());
                        }
                    }
                }
                drop(r);
                lock(running)[node].insert(sandbox.clone(), ip);
                sandboxes.insert(sandbox, (pod, is_static));
            } else {
                lock(report).failed_adds += 1;
                del(&sandbox, &pod, is_static);
            }
        } else {
            let pick = rng.below(sandboxes.len());
            let sandbox = sandboxes.keys().nth(pick).cloned().expect("a sandbox");
            let (pod, is_static) = sandboxes.remove(&sandbox).expect("known");
            del(&sandbox, &pod, is_static);
            lock(running)[node].remove(&sandbox);
            lock(report).dels += 1;
        }
    }
}

/// Everything that disagrees now; empty once the storm left nothing wrong.
fn check(
    emulator: &Emulator,
    nodes: &[Arc<Mutex<Node>>],
    running: &[BTreeMap<String, String>],
    report: &mut Report,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let world = emulator.world();
    let enis: Vec<&Value> = world["vpc"]["enis"]
        .as_object()
        .map(|m| m.values().filter(|e| e["primary"] == false).collect())
        .unwrap_or_default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for e in &enis {
        for ip in e["secondary_ips"].as_array().into_iter().flatten() {
            let ip = ip.as_str().unwrap_or_default().to_string();
            let id = e["id"].as_str().unwrap_or_default().to_string();
            if let Some(other) = seen.insert(ip.clone(), id.clone()) {
                wrong.push(format!("{ip} is on two ENIs: {other} and {id}"));
            }
        }
    }
    let unattached = enis.iter().filter(|e| e["attached_to"].is_null()).count();
    if unattached > 0 {
        wrong.push(format!("{unattached} ENIs attached nowhere"));
    }
    let mut known = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let n = lock(node);
        let instance = format!("ins-sim{:04}", n.instance);
        let pool = match proto::client::call(&n.socket(), &Request::Pool, Duration::from_secs(10)) {
            Ok(Ok(Response::Pool(p))) => p,
            other => {
                wrong.push(format!("{instance}: pool: {other:?}"));
                continue;
            }
        };
        let mut in_pool = BTreeSet::new();
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for e in &pool.enis {
            for ip in &e.ips {
                if matches!(ip.state, IpState::Attaching { .. }) {
                    continue;
                }
                in_pool.insert(ip.ip.to_string());
                if let IpState::Allocated { key, .. } = &ip.state {
                    held.insert(key.container_id.clone(), format!("{}/32", ip.ip));
                }
            }
        }
        if held != running[i] {
            wrong.push(format!(
                "{instance}: the agent holds {held:?} but the pods running are {:?}",
                running[i]
            ));
        }
        let in_cloud: BTreeSet<String> = enis
            .iter()
            .filter(|e| e["attached_to"] == instance.as_str())
            .flat_map(|e| e["secondary_ips"].as_array().into_iter().flatten())
            .filter_map(|ip| ip.as_str().map(str::to_string))
            .collect();
        if in_pool != in_cloud {
            wrong.push(format!(
                "{instance}: pool and cloud differ: only in the pool {:?}, only in the cloud {:?}",
                in_pool.difference(&in_cloud).collect::<Vec<_>>(),
                in_cloud.difference(&in_pool).collect::<Vec<_>>()
            ));
        }
        known.extend(in_pool);
    }
    report.enis = (enis.len(), unattached);
    report.ips = (
        seen.len(),
        seen.keys().filter(|ip| !known.contains(*ip)).count(),
    );
    wrong
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// xorshift64: the storm's choices, repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
