//! `scale`: a cluster's cold start against one account's VPC API. Many node
//! agents in this process (the real `Agent` with its real Tencent Cloud
//! client, a fake dataplane and an in-memory store; no kernel work), each
//! talking HTTP to the cluster's cloud gateway (the real one, in this
//! process, callers known by a token file each) in front of one emulator
//! that enforces the API's documented limits for all of them together, its
//! world in memory; or, with `--shape direct`, each agent to the emulator
//! with a key of its own. Measures how long until every node has its first
//! secondary ENI with its warm IPs, the calls per action and node, the
//! throttled calls, the slowest node, and puts the time beside the bound
//! no design can beat: the ENIs to attach at `AttachNetworkInterface`'s
//! documented rate, plus one task's latency. With a VPC ENI quota too
//! small for every node, checks that exactly the nodes past it report
//! `ENILimit` and that no other node fails. With `--failover-at-s S`, two
//! gateway replicas serve and the one in use is killed S seconds in.
//!
//!   bench/scale [--nodes 200] [--eni-quota N] [--task-latency-ms 1000]
//!               [--api-limits documented] [--cloud-qps 10] [--warm 4]
//!               [--shape gateway|direct] [--rate-share 0.9]
//!               [--failover-at-s S] [--timeout-s 900] [--steady-s 0]
//!               [--json FILE]
//!
//! With `--steady-s N`, the agents run N seconds more once every node is
//! ready, and the calls they make meanwhile (maintenance, reconciliation,
//! leaked-ENI checks; no pod churn) are printed per node and hour: what a
//! cluster at rest costs the account, to compare between sizes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::gateways::{self, Replica};
use bench::pct;
use node_agent::agent::{Agent, AgentConfig};
use node_agent::cloud::TencentCloud;
use node_agent::cloud::tencent::{CredentialSource, Credentials, Identity, Settings};
use node_agent::dataplane::FakeDataplane;
use node_agent::server::Handler;
use node_agent::store::MemoryStore;
use proto::wire::{IpState, Request, Response};
use serde_json::json;
use vpc_sim::api::limits::DOCUMENTED_RATES;
use vpc_sim::api::{ApiLimits, Credentials as SimCredentials, Emulator, Faults};
use vpc_sim::model::Cidr;
use vpc_sim::world::{NodeLimits, SharedWorld, World};

type NodeAgent = Agent<TencentCloud, FakeDataplane>;

#[derive(Debug)]
struct Args {
    nodes: usize,
    eni_quota: Option<u32>,
    task_latency_ms: u64,
    api_limits: String,
    cloud_qps: f64,
    warm: usize,
    timeout: Duration,
    steady: Duration,
    json: Option<String>,
    shape: Shape,
    rate_share: f64,
    failover_at: Option<Duration>,
}

/// How the agents reach the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Through the cluster's cloud gateway.
    Gateway,
    /// Each with a key of its own, straight to the API.
    Direct,
}

fn usage(why: &str) -> ! {
    eprintln!("scale: {why}");
    eprintln!(
        "usage: scale [--nodes 200] [--eni-quota N] [--task-latency-ms 1000] [--api-limits documented] [--cloud-qps 10] [--warm 4] [--shape gateway|direct] [--rate-share 0.9] [--failover-at-s S] [--timeout-s 900] [--steady-s 0] [--json FILE]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        nodes: 200,
        eni_quota: None,
        task_latency_ms: 1000,
        api_limits: "documented".into(),
        cloud_qps: 10.0,
        warm: 4,
        timeout: Duration::from_secs(900),
        steady: Duration::ZERO,
        json: None,
        shape: Shape::Gateway,
        rate_share: node_agent::gateway::budget::DEFAULT_SHARE,
        failover_at: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, value] = pair else {
            usage(&format!("{} needs a value", pair[0]));
        };
        let num = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag} takes a number")))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = num() as usize,
            "--eni-quota" => a.eni_quota = Some(num() as u32),
            "--task-latency-ms" => a.task_latency_ms = num(),
            "--api-limits" => a.api_limits = value.clone(),
            "--cloud-qps" => {
                a.cloud_qps = value
                    .parse()
                    .unwrap_or_else(|_| usage("--cloud-qps takes a number"))
            }
            "--warm" => a.warm = num() as usize,
            "--timeout-s" => a.timeout = Duration::from_secs(num()),
            "--steady-s" => a.steady = Duration::from_secs(num()),
            "--json" => a.json = Some(value.clone()),
            "--shape" => {
                a.shape = match value.as_str() {
                    "gateway" => Shape::Gateway,
                    "direct" => Shape::Direct,
                    _ => usage("--shape takes gateway or direct"),
                }
            }
            "--rate-share" => {
                a.rate_share = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 1.0)
                    .unwrap_or_else(|| usage("--rate-share takes a number in (0, 1]"))
            }
            "--failover-at-s" => a.failover_at = Some(Duration::from_secs(num())),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    a
}

/// What became of one node.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// A secondary ENI and the warm IPs, after this many seconds.
    Ready(f64),
    /// `ENILimit` reported, after this many seconds.
    EniLimit(f64),
}

fn main() {
    let a = args();
    // The agents' and the gateway's warnings, with `SCALE_LOG=warn`.
    if let Ok(level) = std::env::var("SCALE_LOG") {
        let level = level
            .parse()
            .unwrap_or_else(|_| usage("SCALE_LOG takes a level"));
        node_agent::logging::init(node_agent::logging::LogFormat::Text, level);
    }
    // Every ENI counts against the VPC's quota, the nodes' primary ENIs too.
    let quota = a.eni_quota.unwrap_or((a.nodes as u32) * 4 + 100);
    let expected_ready = (quota as usize).saturating_sub(a.nodes).min(a.nodes);
    let limits = ApiLimits::parse(&a.api_limits).unwrap_or_else(|e| usage(&e));
    let node_limits = NodeLimits {
        max_enis: 4,
        max_ips_per_eni: 20,
    };
    let world = World::with_subnet(
        a.nodes,
        node_limits,
        quota,
        Cidr::parse("10.0.0.0/16").expect("cidr"),
    )
    .unwrap_or_else(|e| usage(&e.to_string()));
    let credentials = SimCredentials {
        secret_id: "AKIDscale".into(),
        secret_key: "scale-secret".into(),
    };
    let emulator = Arc::new(
        Emulator::new(
            SharedWorld::in_memory(world),
            credentials.clone(),
            Faults {
                task_latency_ms: a.task_latency_ms,
                ..Faults::default()
            },
        )
        .limited(limits.clone()),
    );
    let (address, server) = vpc_sim::api::http::listen("127.0.0.1:0").unwrap_or_else(|e| usage(&e));
    {
        let emulator = Arc::clone(&emulator);
        std::thread::spawn(move || vpc_sim::api::http::serve(server, emulator, false));
    }
    let endpoint = format!("http://{address}");
    let replicas: Arc<std::sync::Mutex<Vec<Replica>>> = Arc::default();
    let tokens = std::env::temp_dir().join(format!("vpc-cni-scale-{}", std::process::id()));
    let to = match a.shape {
        Shape::Direct => To::Cloud(endpoint.clone()),
        Shape::Gateway => {
            let n = if a.failover_at.is_some() { 2 } else { 1 };
            let mut held = replicas.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..n {
                held.push(Replica::start(
                    &endpoint,
                    vpc_sim::api::REGION,
                    Credentials {
                        secret_id: credentials.secret_id.clone(),
                        secret_key: credentials.secret_key.clone(),
                        token: None,
                    },
                    a.rate_share,
                    CLUSTER,
                ));
            }
            std::fs::create_dir_all(&tokens).unwrap_or_else(|e| usage(&e.to_string()));
            To::Gateway {
                urls: held.iter().map(|r| r.url.clone()).collect(),
                tokens: tokens.clone(),
            }
        }
    };
    eprintln!(
        "scale: {} nodes, VPC ENI quota {quota} ({} nodes can get a secondary ENI), task latency {} ms, API limits {}, {} qps per agent, {}",
        a.nodes,
        expected_ready,
        a.task_latency_ms,
        a.api_limits,
        a.cloud_qps,
        match &to {
            To::Cloud(_) => "each agent straight to the API".to_string(),
            To::Gateway { urls, .. } => format!(
                "through the cloud gateway ({} replica(s), {} of the documented rates)",
                urls.len(),
                a.rate_share
            ),
        }
    );
    let killed_at: Arc<std::sync::Mutex<Option<f64>>> = Arc::default();
    if let Some(at) = a.failover_at {
        let (replicas, killed_at) = (Arc::clone(&replicas), Arc::clone(&killed_at));
        let t0 = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(at);
            if let Some(first) = replicas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first_mut()
            {
                first.kill();
            }
            *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(t0.elapsed().as_secs_f64());
            eprintln!("scale: the gateway replica in use killed");
        });
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(a.nodes * 2 + 64)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let outcomes = runtime.block_on(run(&a, &to, &credentials, &emulator));
    let wall = started.elapsed().as_secs_f64();
    let stats = emulator.stats();
    // The agents keep running on the runtime's workers meanwhile.
    let steady = (!a.steady.is_zero()).then(|| {
        eprintln!("scale: at rest for {} s", a.steady.as_secs());
        std::thread::sleep(a.steady);
        let after = emulator.stats();
        after
            .iter()
            .map(|(action, s)| {
                let before = stats.get(action).map_or(0, |b| b.calls);
                (action.clone(), s.calls.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect::<BTreeMap<String, u64>>()
    });
    let relayed: Vec<node_agent::gateway::Counts> = replicas
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(Replica::counts)
        .collect();
    let killed_at = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
    report(
        &a,
        quota,
        expected_ready,
        &limits,
        &outcomes,
        &stats,
        wall,
        steady.as_ref(),
        &relayed,
        killed_at,
    );
    // The agents' tasks and blocking calls end with the process.
    let _ = std::fs::remove_dir_all(&tokens);
    std::process::exit(0);
}

/// The cluster name the ENIs are tagged with.
const CLUSTER: &str = "scale";

/// Where the agents send their calls.
#[derive(Debug)]
enum To {
    /// The API, each agent with the key.
    Cloud(String),
    /// The gateway's replicas, first one first, each agent with a token
    /// file in `tokens`.
    Gateway {
        urls: Vec<String>,
        tokens: std::path::PathBuf,
    },
}

async fn run(
    a: &Args,
    to: &To,
    credentials: &SimCredentials,
    emulator: &Emulator,
) -> Vec<Option<Outcome>> {
    let config = AgentConfig {
        ip_cooldown: Duration::from_secs(30),
        pool: node_agent::sizing::Targets {
            warm_ip: a.warm,
            warm_eni: 0,
            min_ip: 0,
            max_eni: None,
            release_batch: 5,
        },
        leaked_eni_grace: Duration::from_secs(600),
        claim_expiry: None,
        enable_ownerref: false,
        maintenance_interval: Duration::from_secs(30),
        reconcile_interval: Duration::from_secs(300),
        ipv6: false,
    };
    let t0 = Instant::now();
    let mut starting = tokio::task::JoinSet::new();
    for i in 1..=a.nodes {
        let instance_id = vpc_sim::world::instance_id(i);
        let (endpoint, credentials, urls) = match to {
            To::Cloud(endpoint) => (
                endpoint.clone(),
                CredentialSource::Fixed(Credentials {
                    secret_id: credentials.secret_id.clone(),
                    secret_key: credentials.secret_key.clone(),
                    token: None,
                }),
                Vec::new(),
            ),
            To::Gateway { urls, tokens } => (
                urls[0].clone(),
                CredentialSource::Gateway {
                    token_file: gateways::token_file(tokens, &instance_id),
                },
                urls.clone(),
            ),
        };
        let settings = Settings {
            endpoint,
            region: vpc_sim::api::REGION.to_string(),
            credentials,
            qps: a.cloud_qps,
            timeout: Duration::from_secs(10),
            identity: Identity {
                instance_id,
                zone: vpc_sim::world::ZONE.into(),
                vpc_id: vpc_sim::world::VPC_ID.into(),
                region: vpc_sim::api::REGION.to_string(),
            },
            subnets: Vec::new(),
            cluster: CLUSTER.into(),
        };
        let config = config.clone();
        starting.spawn(async move {
            let cloud = TencentCloud::new(settings);
            if urls.len() > 1 {
                cloud.set_endpoints(&urls);
            }
            let agent = Agent::start(
                cloud,
                FakeDataplane::default(),
                Box::new(MemoryStore::default()),
                config,
                node_agent::clock::system_clock(),
            )
            .await
            .expect("agent starts");
            let agent = Arc::new(agent);
            tokio::spawn(Arc::clone(&agent).maintain_pool());
            (i - 1, agent)
        });
    }
    let mut agents: Vec<Option<Arc<NodeAgent>>> = vec![None; a.nodes];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; a.nodes];
    let deadline = t0 + a.timeout;
    let mut last_note = Instant::now();
    loop {
        while let Some(joined) = starting.try_join_next() {
            let (i, agent) = joined.expect("agent start task");
            agents[i] = Some(agent);
        }
        let now = t0.elapsed().as_secs_f64();
        for (i, agent) in agents.iter().enumerate() {
            let Some(agent) = agent else { continue };
            if matches!(outcomes[i], Some(Outcome::Ready(_))) {
                continue;
            }
            if let Ok(Response::Pool(view)) = agent.handle(Request::Pool, None).await {
                let free: usize = view
                    .enis
                    .iter()
                    .flat_map(|e| &e.ips)
                    .filter(|ip| matches!(ip.state, IpState::Free))
                    .count();
                if !view.enis.is_empty() && free >= a.warm {
                    outcomes[i] = Some(Outcome::Ready(now));
                } else if outcomes[i].is_none()
                    && view.conditions.iter().any(|c| c.kind == "ENILimit")
                {
                    outcomes[i] = Some(Outcome::EniLimit(now));
                }
            }
        }
        let ready = outcomes
            .iter()
            .filter(|o| matches!(o, Some(Outcome::Ready(_))))
            .count();
        let limited = outcomes
            .iter()
            .filter(|o| matches!(o, Some(Outcome::EniLimit(_))))
            .count();
        if ready + limited == a.nodes || Instant::now() > deadline {
            break;
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            let calls = emulator.stats();
            let of = |action: &str| calls.get(action).map_or(0, |s| s.calls);
            eprintln!(
                "scale: {now:.0} s: {ready} ready, {limited} at ENILimit; calls so far: {} creates, {} attaches, {} ENI looks",
                of("CreateNetworkInterface"),
                of("AttachNetworkInterface"),
                of("DescribeNetworkInterfaces")
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcomes
}

/// The shortest cold start no design can beat: every ENI must be attached,
/// at `AttachNetworkInterface`'s documented rate at best, and the last
/// attach runs for one task's latency.
fn lower_bound(enis: usize, limits: &ApiLimits, task_latency_s: f64) -> f64 {
    let rate = limits
        .rates
        .get("AttachNetworkInterface")
        .map_or(f64::INFINITY, |r| f64::from(*r));
    enis as f64 / rate + task_latency_s
}

// The report is one table of everything measured.
#[allow(clippy::too_many_arguments)]
fn report(
    a: &Args,
    quota: u32,
    expected_ready: usize,
    limits: &ApiLimits,
    outcomes: &[Option<Outcome>],
    stats: &BTreeMap<String, vpc_sim::api::ActionStats>,
    wall: f64,
    steady: Option<&BTreeMap<String, u64>>,
    relayed: &[node_agent::gateway::Counts],
    killed_at: Option<f64>,
) {
    let ready: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Some(Outcome::Ready(t)) => Some(*t),
            _ => None,
        })
        .collect();
    let limited = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::EniLimit(_))))
        .count();
    let failed = outcomes.iter().filter(|o| o.is_none()).count();
    let slowest = ready.iter().copied().fold(0.0, f64::max);
    let bound = lower_bound(expected_ready, limits, a.task_latency_ms as f64 / 1e3);
    let n = a.nodes as f64;
    let calls: u64 = stats.values().map(|s| s.calls).sum();
    let throttled: u64 = stats.values().map(|s| s.throttled).sum();

    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let _ = writeln!(
        out,
        "\n{} nodes, ENI quota {quota}: {} ready, {limited} at ENILimit, {failed} neither (expected {} ready, {} at ENILimit)",
        a.nodes,
        ready.len(),
        expected_ready,
        a.nodes - expected_ready
    );
    if !ready.is_empty() {
        let _ = writeln!(
            out,
            "time to first secondary ENI with {} warm IPs: p50 {:.1} s, p99 {:.1} s, slowest node {:.1} s",
            a.warm,
            pct(&ready, 50.0),
            pct(&ready, 99.0),
            slowest
        );
    }
    let _ = writeln!(
        out,
        "bound (ENIs / AttachNetworkInterface's documented rate + task latency): {bound:.1} s; measured/bound: {:.2}",
        if bound > 0.0 { slowest / bound } else { 0.0 }
    );
    let _ = writeln!(
        out,
        "\n| action | rate/s | calls | per node | throttled | calls / rate (s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (action, s) in stats {
        let rate = limits
            .rates
            .get(action)
            .map_or("-".to_string(), |r| r.to_string());
        let b = limits.rates.get(action).map_or("-".to_string(), |r| {
            format!("{:.1}", s.calls as f64 / f64::from(*r))
        });
        let _ = writeln!(
            out,
            "| {action} | {rate} | {} | {:.2} | {} | {b} |",
            s.calls,
            s.calls as f64 / n,
            s.throttled
        );
    }
    let _ = writeln!(
        out,
        "| all | | {calls} | {:.2} | {throttled} | |\n\nwall {wall:.1} s",
        calls as f64 / n
    );
    for (i, r) in relayed.iter().enumerate() {
        let _ = writeln!(
            out,
            "gateway replica {}: {} calls sent, {} of them refused as throttled; {} turned away (queue longer than {} s); {} looks at ENIs by id in {} batched calls",
            i + 1,
            r.relay.sent,
            r.relay.throttled,
            r.relay.busy,
            node_agent::cloud::tencent::GATEWAY_QUEUE.as_secs(),
            r.batched_looks,
            r.batch_calls
        );
    }
    if let Some(t) = killed_at {
        let _ = writeln!(out, "the replica in use was killed at {t:.1} s");
    }
    let per_hour = |calls: u64| calls as f64 / n * 3600.0 / a.steady.as_secs_f64();
    if let Some(steady) = steady {
        let _ = writeln!(
            out,
            "\nat rest for {} s: calls per node per hour\n\n| action | per node per hour |\n|---|---|",
            a.steady.as_secs()
        );
        for (action, calls) in steady {
            let _ = writeln!(out, "| {action} | {:.1} |", per_hour(*calls));
        }
        let _ = writeln!(out, "| all | {:.1} |", per_hour(steady.values().sum()));
    }
    let verdict = ready.len() == expected_ready && limited == a.nodes - expected_ready;
    let _ = writeln!(
        out,
        "{}",
        if verdict {
            "PASS: exactly the nodes past the quota report ENILimit, every other node is ready"
        } else {
            "FAIL: the outcome does not match the quota"
        }
    );
    let json = json!({
        "nodes": a.nodes,
        "eni_quota": quota,
        "task_latency_ms": a.task_latency_ms,
        "api_limits": a.api_limits,
        "cloud_qps": a.cloud_qps,
        "warm_ips": a.warm,
        "ready": ready.len(),
        "eni_limit": limited,
        "failed": failed,
        "expected_ready": expected_ready,
        "pass": verdict,
        "ready_p50_s": if ready.is_empty() { 0.0 } else { pct(&ready, 50.0) },
        "ready_p99_s": if ready.is_empty() { 0.0 } else { pct(&ready, 99.0) },
        "slowest_node_s": slowest,
        "lower_bound_s": bound,
        "shape": format!("{:?}", a.shape),
        "rate_share": a.rate_share,
        "failover_at_s": a.failover_at.map(|d| d.as_secs()),
        "killed_at_s": killed_at,
        "gateway": relayed.iter().map(|r| json!({
            "sent": r.relay.sent,
            "throttled": r.relay.throttled,
            "busy": r.relay.busy,
            "batch_calls": r.batch_calls,
            "batched_looks": r.batched_looks,
        })).collect::<Vec<_>>(),
        "ratio": if bound > 0.0 { slowest / bound } else { 0.0 },
        "calls": calls,
        "throttled": throttled,
        "by_action": stats,
        "documented_rates": DOCUMENTED_RATES.iter().map(|(a, r)| (a.to_string(), *r)).collect::<BTreeMap<_, _>>(),
        "wall_s": wall,
        "steady_s": a.steady.as_secs(),
        "steady_calls_per_node_hour": steady.map(|s| s.iter().map(|(k, v)| (k.clone(), per_hour(*v))).collect::<BTreeMap<_, _>>()),
    });
    let path = a
        .json
        .clone()
        .unwrap_or_else(|| format!("target/scale-{}.json", a.nodes));
    match std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")) {
        Ok(()) => {
            let _ = writeln!(out, "JSON: {path}");
        }
        Err(e) => eprintln!("scale: {path}: {e}"),
    }
}
