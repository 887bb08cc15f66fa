//! `burst`: pods arriving at once on a node whose warm pool is small: ADD
//! latencies (median, p99, max) and the cloud calls the growth took, with
//! the agent against the VPC API emulator (default task latency unless
//! given) and the fake dataplane, every ADD through the real plugin. The
//! agent holds no key: its calls go through the cluster's cloud gateway
//! (the real one, in this process), or with `--shape direct` straight to
//! the emulator with a key.
//!
//!   bench/burst [--pods 50] [--warm 4] [--task-latency-ms 0] [--latency-ms 0]
//!               [--shape gateway|direct]

use std::io::Write;
use std::time::{Duration, Instant};

use bench::gateways::{self, Replica};
use bench::pct;
use node_agent::cloud::tencent::Credentials;
use vpc_cni_tests::{Agent, CniEnv, Emulator, cni};

fn main() {
    let mut pods = 50usize;
    let mut warm = 4usize;
    let mut task_latency = 0u64;
    let mut latency = 0u64;
    let mut gateway = true;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            usage(&format!("{} needs a value", pair[0]));
        };
        if flag == "--shape" {
            gateway = match value.as_str() {
                "gateway" => true,
                "direct" => false,
                _ => usage("--shape takes gateway or direct"),
            };
            continue;
        }
        let n: u64 = value
            .parse()
            .unwrap_or_else(|_| usage(&format!("{flag} takes a number")));
        match flag.as_str() {
            "--pods" => pods = n as usize,
            "--warm" => warm = n as usize,
            "--task-latency-ms" => task_latency = n,
            "--latency-ms" => latency = n,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let (task_latency, latency, warm_s) = (
        task_latency.to_string(),
        latency.to_string(),
        warm.to_string(),
    );
    let emulator = Emulator::start(
        1,
        &[
            "--task-latency-ms",
            &task_latency,
            "--latency-ms",
            &latency,
            "--max-enis",
            "8",
            "--ips-per-eni",
            "30",
        ],
    );
    let mut flags = vec![
        "--warm-ip-target".to_string(),
        warm_s,
        "--log-format".into(),
        "json".into(),
    ];
    let tokens = tempfile::tempdir().expect("tempdir");
    let replica = gateway.then(|| {
        let replica = Replica::start(
            &format!("http://{}", emulator.address),
            vpc_sim::api::REGION,
            Credentials {
                secret_id: emulator.secret_id.clone(),
                secret_key: emulator.secret_key.clone(),
                token: None,
            },
            node_agent::gateway::budget::DEFAULT_SHARE,
            "default",
        );
        let token = gateways::token_file(tokens.path(), &vpc_sim::world::instance_id(1));
        flags.extend([
            "--cloud-gateway".into(),
            replica.url.clone(),
            "--gateway-token-file".into(),
            token.display().to_string(),
        ]);
        replica
    });
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start_on(emulator, &flags);
    // Let the warm pool fill first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while free(&agent) < warm && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls_before = api_calls(&agent);
    let conf = serde_json::to_vec(&agent.conf("1.0.0")).expect("json");
    let started = Instant::now();
    let latencies: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..pods)
            .map(|i| {
                let (agent, conf) = (&agent, &conf);
                s.spawn(move || {
                    let id = format!("burst{i}");
                    let env = CniEnv::pod("ADD", &id, &agent.netns(&id));
                    let t = Instant::now();
                    let run = cni(&env, conf);
                    assert!(run.ok, "ADD {id}: {}", run.stdout);
                    t.elapsed().as_secs_f64() * 1e3
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let wall = started.elapsed();
    let calls = api_calls(&agent).saturating_sub(calls_before);
    let timeline = timeline(&agent, calls_before);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{pods} pods at once, warm pool {warm} IPs, API latency {latency} ms, task latency {task_latency} ms, {}",
        if replica.is_some() {
            "the agent's calls through the cloud gateway"
        } else {
            "the agent straight to the API"
        }
    );
    let _ = writeln!(
        out,
        "ADD median {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {pods} in {:.0} ms; {calls} API calls during the burst",
        pct(&latencies, 50.0),
        pct(&latencies, 99.0),
        pct(&latencies, 100.0),
        wall.as_secs_f64() * 1e3
    );
    let _ = writeln!(out, "cloud calls of the burst, ms after the first:");
    for (at, action) in timeline {
        let _ = writeln!(out, "  {at:>7.1}  {action}");
    }
}

/// The burst's cloud calls in order: when each was done, in milliseconds
/// after the first, and its action.
fn timeline(agent: &Agent, skip: usize) -> Vec<(f64, String)> {
    let calls: Vec<(f64, String)> = agent
        .log()
        .lines()
        .filter(|l| l.contains("cloud call done"))
        .skip(skip)
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let at = v["timestamp"].as_str()?;
            // 2026-01-01T00:00:00.123456Z: seconds of the day are enough.
            let time = at.split('T').nth(1)?.trim_end_matches('Z');
            let mut parts = time.split(':');
            let (h, m, s): (f64, f64, f64) = (
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            );
            Some((
                (h * 3600.0 + m * 60.0 + s) * 1e3,
                v["action"].as_str()?.to_string(),
            ))
        })
        .collect();
    let first = calls.first().map_or(0.0, |c| c.0);
    calls.into_iter().map(|(t, a)| (t - first, a)).collect()
}

fn free(agent: &Agent) -> usize {
    agent
        .pool()
        .enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter(|i| i.state == proto::wire::IpState::Free)
        .count()
}

/// API calls the emulator answered so far (its log has one line per failed
/// call only, so count the agent's "cloud call done" debug lines).
fn api_calls(agent: &Agent) -> usize {
    agent.log().matches("cloud call done").count()
}

fn usage(msg: &str) -> ! {
    eprintln!("burst: {msg}");
    eprintln!(
        "usage: burst [--pods 50] [--warm 4] [--task-latency-ms 0] [--latency-ms 0] [--shape gateway|direct]"
    );
    std::process::exit(2)
}
