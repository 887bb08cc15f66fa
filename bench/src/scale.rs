//! `scale`: a cluster's cold start against one account's VPC API. Many node
//! agents in this process (the real `Agent` with its real Tencent Cloud
//! client, a fake dataplane and an in-memory store; no kernel work), each
//! talking HTTP to one emulator that enforces the API's documented limits
//! for all of them together, its world in memory. Measures how long until
//! every node has its first secondary ENI with its warm IPs, the calls per
//! action and node, the throttled calls, the slowest node, and puts the
//! time beside the lower bound the documented rates set. With a VPC ENI
//! quota too small for every node, checks that exactly the nodes past it
//! report `ENILimit` and that no other node fails.
//!
//!   bench/scale [--nodes 200] [--eni-quota N] [--task-latency-ms 1000]
//!               [--api-limits documented] [--cloud-qps 10] [--warm 4]
//!               [--timeout-s 900] [--steady-s 0] [--json FILE]
//!
//! With `--steady-s N`, the agents run N seconds more once every node is
//! ready, and the calls they make meanwhile (maintenance, reconciliation,
//! leaked-ENI checks; no pod churn) are printed per node and hour: what a
//! cluster at rest costs the account, to compare between sizes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

fn usage(why: &str) -> ! {
    eprintln!("scale: {why}");
    eprintln!(
        "usage: scale [--nodes 200] [--eni-quota N] [--task-latency-ms 1000] [--api-limits documented] [--cloud-qps 10] [--warm 4] [--timeout-s 900] [--steady-s 0] [--json FILE]"
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
    eprintln!(
        "scale: {} nodes, VPC ENI quota {quota} ({} nodes can get a secondary ENI), task latency {} ms, API limits {}, {} qps per agent",
        a.nodes, expected_ready, a.task_latency_ms, a.api_limits, a.cloud_qps
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(a.nodes * 2 + 64)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let outcomes = runtime.block_on(run(&a, &address, &credentials));
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
    report(
        &a,
        quota,
        expected_ready,
        &limits,
        &outcomes,
        &stats,
        wall,
        steady.as_ref(),
    );
    // The agents' tasks and blocking calls end with the process.
    std::process::exit(0);
}

async fn run(a: &Args, address: &str, credentials: &SimCredentials) -> Vec<Option<Outcome>> {
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
    };
    let t0 = Instant::now();
    let mut starting = tokio::task::JoinSet::new();
    for i in 1..=a.nodes {
        let settings = Settings {
            endpoint: format!("http://{address}"),
            region: vpc_sim::api::REGION.to_string(),
            credentials: CredentialSource::Fixed(Credentials {
                secret_id: credentials.secret_id.clone(),
                secret_key: credentials.secret_key.clone(),
                token: None,
            }),
            qps: a.cloud_qps,
            timeout: Duration::from_secs(10),
            identity: Identity {
                instance_id: vpc_sim::world::instance_id(i),
                zone: vpc_sim::world::ZONE.into(),
                vpc_id: vpc_sim::world::VPC_ID.into(),
                region: vpc_sim::api::REGION.to_string(),
            },
            subnets: Vec::new(),
            cluster: "scale".into(),
        };
        let config = config.clone();
        starting.spawn(async move {
            let agent = Agent::start(
                TencentCloud::new(settings),
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
            eprintln!("scale: {now:.0} s: {ready} ready, {limited} at ENILimit");
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcomes
}

/// The shortest cold start the documented rates allow: every node needs at
/// least its limits (`DescribeNetworkInterfaceLimit`), its zone's subnets,
/// one look at its ENIs, one create, one attach and one confirmation of the
/// attach (`DescribeVpcTaskResult`, or `DescribeNetworkInterfaces` naming up
/// to 100 ENIs at once); each action's calls take `calls / rate` seconds at
/// best, and the attach itself runs for the task latency.
fn lower_bound(
    nodes: usize,
    enis: usize,
    limits: &ApiLimits,
    task_latency_s: f64,
) -> (f64, Vec<(&'static str, f64)>) {
    let rate = |action: &str| {
        limits
            .rates
            .get(action)
            .map(|r| f64::from(*r))
            .unwrap_or(f64::INFINITY)
    };
    let n = nodes as f64;
    let e = enis as f64;
    let confirm_batched = (e / 100.0).ceil();
    let per_action: Vec<(&'static str, f64)> = vec![
        (
            "DescribeNetworkInterfaceLimit",
            n / rate("DescribeNetworkInterfaceLimit"),
        ),
        ("DescribeSubnets", n / rate("DescribeSubnets")),
        (
            "DescribeNetworkInterfaces",
            (n + confirm_batched) / rate("DescribeNetworkInterfaces"),
        ),
        ("CreateNetworkInterface", n / rate("CreateNetworkInterface")),
        ("AttachNetworkInterface", e / rate("AttachNetworkInterface")),
    ];
    let slowest = per_action.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    (slowest + task_latency_s, per_action)
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
    let (bound, per_action_bound) = lower_bound(
        a.nodes,
        expected_ready,
        limits,
        a.task_latency_ms as f64 / 1e3,
    );
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
        "lower bound from the documented rates: {bound:.1} s; measured/bound: {:.2}",
        if bound > 0.0 { slowest / bound } else { 0.0 }
    );
    let _ = writeln!(
        out,
        "\n| action | rate/s | calls | per node | throttled | bound (s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (action, s) in stats {
        let rate = limits
            .rates
            .get(action)
            .map_or("-".to_string(), |r| r.to_string());
        let b = per_action_bound
            .iter()
            .find(|(x, _)| x == action)
            .map_or("-".to_string(), |(_, t)| format!("{t:.1}"));
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
