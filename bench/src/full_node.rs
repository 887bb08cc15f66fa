//! `full-node`: one `vpc-sim` node with the netlink data path holding many
//! pods (250 by default, on an instance with 8 ENIs of 50 IPs): the agent's
//! resident memory with them, and a SIGKILL and restart timed until the
//! agent answers STATUS ready again, then every allocation checked to be
//! still there.
//!
//!   bench/full-node [--pods 250]

use std::io::Write;
use std::time::{Duration, Instant};

use bench::{rss_kib, rss_split_kib};
use proto::wire::{IpState, Request, Response};
use vpc_cni_tests::{CniEnv, PodNetns, Sim, cni};

fn main() {
    let pods: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 250,
        [flag, n] if flag == "--pods" => n.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    let sim = Sim::up(
        1,
        &[
            "--max-enis",
            "8",
            "--ips-per-eni",
            "50",
            "--agent-flag=--warm-ip-target=8",
        ],
    );
    let conf = serde_json::to_vec(&sim.conf(1, "1.0.0")).expect("json");
    let namespaces: Vec<PodNetns> = (0..pods).map(|_| PodNetns::new()).collect();
    let started = Instant::now();
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("full{i:04}");
        let run = cni(&CniEnv::pod("ADD", &id, &ns.path()), &conf);
        assert!(run.ok, "ADD {id}: {}", run.stdout);
    }
    let added = started.elapsed();
    let socket = std::path::PathBuf::from(sim.get("NODE1_SOCKET"));
    let pid = agent_pid(&sim);
    let rss = pid.and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;
    let (anon, file) = pid.and_then(rss_split_kib).unwrap_or((0, 0));
    let before = allocated(&socket);
    let restart = Instant::now();
    sim.crash_agent(1);
    let restarted = restart.elapsed();
    let after = allocated(&socket);
    let rss_after = agent_pid(&sim).and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{pods} pods on one node (netlink data path): added one by one in {:.1} s",
        added.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "agent resident memory with {pods} pods: {rss:.1} MiB ({:.1} MiB its own, {:.1} MiB of its executable and libraries)",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "SIGKILL to STATUS ready again: {:.0} ms; resident memory after the restart: {rss_after:.1} MiB",
        restarted.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        out,
        "allocations before {} and after {}: {}",
        before,
        after,
        if before == after && after == pods {
            "nothing lost"
        } else {
            "LOST SOME"
        }
    );
    for (i, ns) in namespaces.iter().enumerate() {
        let _ = cni(
            &CniEnv::pod("DEL", &format!("full{i:04}"), &ns.path()),
            &conf,
        );
    }
    if before != after || after != pods {
        std::process::exit(1);
    }
}

fn agent_pid(sim: &Sim) -> Option<u32> {
    let state = sim.dir.path().join("sim");
    bench::agent_pid(&state)
}

fn allocated(socket: &std::path::Path) -> usize {
    match proto::client::call(socket, &Request::Pool, Duration::from_secs(10)) {
        Ok(Ok(Response::Pool(p))) => p
            .enis
            .iter()
            .flat_map(|e| &e.ips)
            .filter(|i| matches!(i.state, IpState::Allocated { .. }))
            .count(),
        other => panic!("pool: {other:?}"),
    }
}

fn usage() -> ! {
    eprintln!("usage: full-node [--pods N]");
    std::process::exit(2)
}
