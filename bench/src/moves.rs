//! `static-move` (`bench/move`): a static StatefulSet pod moved between
//! the two nodes of a `vpc-sim up --kubernetes` cluster (its `nodeName`
//! patched, as in the `k8s_` move test), again and again: the time from
//! the new pod bound to the other node to that pod Ready with its old IP
//! (median, min, max), and the VPC API calls one move costs, from the
//! emulator's `/_sim/stats` (the cluster's background calls in the same
//! window included, and measured alone beforehand for comparison).
//!
//!   bench/move [--moves 10]

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::pct;
use serde_json::Value;
use vpc_cni_tests::k8s::{Cluster, emulator_request, field, pin, ready, sts};

const STATIC: &str = "tke.cloud.tencent.com/vpc-ip-claim-delete-policy: Never";

fn main() {
    let mut moves = 10usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if flag == "--moves" => {
                moves = value
                    .parse()
                    .unwrap_or_else(|_| usage("--moves takes a number"))
            }
            _ => usage(&format!("unknown or incomplete flag {}", pair[0])),
        }
    }
    if let Err(e) = run(moves) {
        eprintln!("static-move: {e}");
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("static-move: {msg}\nusage: bench/move [--moves 10]");
    std::process::exit(2)
}

/// Calls per action answered by the emulator so far.
fn calls(c: &Cluster) -> BTreeMap<String, u64> {
    let (_, body) = emulator_request(c, "GET", "/_sim/stats", "");
    serde_json::from_str::<BTreeMap<String, Value>>(&body)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v["calls"].as_u64().unwrap_or(0)))
        .collect()
}

fn minus(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn show(calls: &BTreeMap<String, u64>, per: f64) -> String {
    if calls.is_empty() {
        return "none".into();
    }
    calls
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 / per))
        .collect::<Vec<_>>()
        .join(", ")
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn claim_on(c: &Cluster, node: &str, ip: &str) -> bool {
    c.object("vipc", "mover-0").is_some_and(|v| {
        field(&v, &["status", "phase"]) == "Bound"
            && field(&v, &["status", "node"]) == node
            && field(&v, &["status", "ip"]) == ip
    }) && c
        .object("vip", ip)
        .is_some_and(|v| field(&v, &["spec", "node"]) == node)
}

fn run(moves: usize) -> Result<(), String> {
    let started = Instant::now();
    let c = Cluster::up(2);
    eprintln!("cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let nodes = [
        c.get("NODE1_INSTANCE").to_string(),
        c.get("NODE2_INSTANCE").to_string(),
    ];
    let manifest = |node: &str| pin(&sts("mover", 1, STATIC), node);
    c.apply(&manifest(&nodes[0]));
    let first = c.wait_ready("mover-0", Duration::from_secs(90));
    let ip = field(&first, &["status", "podIP"]).to_string();
    wait("the claim Bound on node1", Duration::from_secs(90), || {
        claim_on(&c, &nodes[0], &ip)
    })?;

    // The cluster's own calls in a quiet window, for comparison.
    let quiet = Duration::from_secs(10);
    let before = calls(&c);
    std::thread::sleep(quiet);
    let background = minus(&calls(&c), &before);

    let mut times = Vec::new();
    let mut windows = Vec::new();
    let mut total = BTreeMap::new();
    for i in 0..moves {
        let to = &nodes[(i + 1) % 2];
        let old_uid = c
            .pod("mover-0")
            .map(|p| field(&p, &["metadata", "uid"]).to_string())
            .unwrap_or_default();
        // Each change of the pod, as the API server sends it.
        let mut watch = Command::new(c.get("KUBECTL"))
            .env("KUBECONFIG", c.get("KUBECONFIG"))
            .args(["get", "pod", "mover-0", "-w", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("kubectl get -w: {e}"))?;
        let stdout = watch.stdout.take().expect("piped");
        let before = calls(&c);
        let window = Instant::now();
        c.apply(&manifest(to));
        let (to_owned, ip_owned) = (to.clone(), ip.clone());
        let timing = std::thread::spawn(move || {
            let mut bound: Option<Instant> = None;
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for pod in stream.into_iter::<Value>() {
                let Ok(pod) = pod else { break };
                let now = Instant::now();
                if field(&pod, &["metadata", "uid"]) == old_uid
                    || field(&pod, &["spec", "nodeName"]) != to_owned
                {
                    continue;
                }
                let at = *bound.get_or_insert(now);
                if ready(&pod) {
                    let got = field(&pod, &["status", "podIP"]).to_string();
                    return if got == ip_owned {
                        Ok(now - at)
                    } else {
                        Err(format!("Ready with {got}, not {ip_owned}"))
                    };
                }
            }
            Err("the watch ended first".to_string())
        });
        wait(
            &format!("move {}: the claim Bound on {to}", i + 1),
            Duration::from_secs(120),
            || claim_on(&c, to, &ip),
        )?;
        let timed = wait(
            &format!("move {}: mover-0 Ready on {to}", i + 1),
            Duration::from_secs(120),
            || timing.is_finished(),
        );
        let _ = watch.kill();
        let _ = watch.wait();
        timed?;
        let took = timing.join().map_err(|_| "the watch thread panicked")??;
        let spent = minus(&calls(&c), &before);
        windows.push(window.elapsed());
        for (k, v) in &spent {
            *total.entry(k.clone()).or_insert(0) += v;
        }
        eprintln!(
            "move {}: to {to}, Ready with {ip} {:.0} ms after binding; calls: {}",
            i + 1,
            took.as_secs_f64() * 1e3,
            show(&spent, 1.0)
        );
        times.push(took.as_secs_f64() * 1e3);
    }
    let window_s: f64 = windows.iter().map(Duration::as_secs_f64).sum::<f64>() / moves as f64;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{moves} moves of a static pod between 2 nodes of one subnet (nodeName patched)"
    );
    let _ = writeln!(
        out,
        "bound to the new node -> Ready with the old IP: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        pct(&times, 50.0),
        pct(&times, 0.0),
        pct(&times, 100.0)
    );
    let _ = writeln!(
        out,
        "VPC API calls per move (window {window_s:.1} s on average, from the apply to the claim and VpcIP on the new node): {}",
        show(&total, moves as f64)
    );
    let _ = writeln!(
        out,
        "the cluster's background in {:.0} s before the moves: {}",
        quiet.as_secs_f64(),
        show(&background, 1.0)
    );
    Ok(())
}
