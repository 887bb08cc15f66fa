//! `fault-storm`: the long fault storm (the suite runs a short one): nodes'
//! agents against an emulator that throttles, fails, delays and loses
//! answers, pods churning, agents killed at random; prints what happened
//! and the counts taken through the VPC API and every agent afterwards.
//!
//!   bench/fault-storm [--nodes 5] [--minutes 5] [--latency-ms 2000]
//!                     [--throttle 0.3] [--errors 0.05] [--drop-every 5]
//!                     [--kill-every-s 15] [--seed N]

use std::io::Write;
use std::time::Duration;

use vpc_cni_tests::storm::{self, Options};

fn main() {
    let mut o = Options {
        nodes: 5,
        duration: Duration::from_secs(300),
        latency: Duration::from_millis(2000),
        throttle_rate: 0.3,
        error_rate: 0.05,
        drop_every: 5,
        kill_every: Duration::from_secs(15),
        seed: 0x5eed,
        settle_within: Duration::from_secs(600),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            usage(&format!("{} needs a value", pair[0]));
        };
        let number = |what: &str| -> f64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{what} takes a number")))
        };
        match flag.as_str() {
            "--nodes" => o.nodes = number("--nodes") as usize,
            "--minutes" => o.duration = Duration::from_secs_f64(number("--minutes") * 60.0),
            "--latency-ms" => o.latency = Duration::from_millis(number("--latency-ms") as u64),
            "--throttle" => o.throttle_rate = number("--throttle"),
            "--errors" => o.error_rate = number("--errors"),
            "--drop-every" => o.drop_every = number("--drop-every") as u64,
            "--kill-every-s" => o.kill_every = Duration::from_secs_f64(number("--kill-every-s")),
            "--seed" => o.seed = number("--seed") as u64,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.nodes == 0 || o.drop_every == 0 {
        usage("--nodes and --drop-every must be positive");
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "fault storm: {} nodes, {:.1} min, {} ms latency, {:.0}% throttled, {:.0}% failed, one in {} answers lost, an agent killed every ~{:.0} s",
        o.nodes,
        o.duration.as_secs_f64() / 60.0,
        o.latency.as_millis(),
        o.throttle_rate * 100.0,
        o.error_rate * 100.0,
        o.drop_every,
        o.kill_every.as_secs_f64()
    );
    let _ = out.flush();
    let report = storm::run(&o);
    let _ = writeln!(out, "{}", report.table());
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("fault-storm: {msg}");
    std::process::exit(2)
}
