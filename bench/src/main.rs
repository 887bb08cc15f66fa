//! `cni-latency`: times CNI ADD and DEL of vpc-cni (through a warm agent on
//! a one-node `vpc-sim`) and of the reference `ptp` + `host-local` plugins,
//! every call a separate process with kubelet's environment, in one run on
//! one machine, next to the floor (process start, and the kernel work alone
//! driven in-process); then 110 pods added 8 at a time with each. With
//! `--dual`, also vpc-cni on a dual-stack node (every pod gets an IPv6
//! address too) in the same run.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench::{
    Network, Pod, agent_pid, call, floor, ip, make_pods, pct, rss_kib, up_one_node_with, wait_warm,
};
use nix::sched::{CloneFlags, setns};
use serde_json::json;

const REFERENCE_DIR: &str = "/usr/lib/cni";

struct Options {
    pods: usize,
    burst_pods: usize,
    parallel: usize,
    bin_dir: PathBuf,
    /// Also vpc-cni on a dual-stack node.
    dual: bool,
}

fn main() {
    if let Err(e) = run(parse_args()) {
        eprintln!("cni-latency: {e}");
        std::process::exit(1);
    }
}

fn parse_args() -> Options {
    let mut o = Options {
        pods: 100,
        burst_pods: 110,
        parallel: 8,
        bin_dir: PathBuf::from("target/release"),
        dual: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--dual" {
            o.dual = true;
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--pods" => {
                o.pods = value
                    .parse()
                    .unwrap_or_else(|_| usage("--pods takes a number"))
            }
            "--burst-pods" => {
                o.burst_pods = value
                    .parse()
                    .unwrap_or_else(|_| usage("--burst-pods takes a number"))
            }
            "--parallel" => {
                o.parallel = value
                    .parse()
                    .unwrap_or_else(|_| usage("--parallel takes a number"))
            }
            "--bin-dir" => o.bin_dir = PathBuf::from(value),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.pods == 0 || o.parallel == 0 {
        usage("--pods and --parallel must be positive");
    }
    o
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "cni-latency: {msg}\nusage: cni-latency [--pods N] [--burst-pods N] [--parallel N] [--bin-dir DIR] [--dual]"
    );
    std::process::exit(2)
}

fn run(o: Options) -> Result<(), String> {
    let tag = std::process::id();
    let work = std::env::temp_dir().join(format!("cni-latency-{tag}"));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    // The reference plugins create their host ends in the caller's
    // namespace: give the whole run a scratch one.
    let host_ns = format!("cnilat-{tag}-host");
    ip(&["netns", "add", &host_ns])?;
    let result = measure(&o, &work, &host_ns);
    let _ = ip(&["netns", "del", &host_ns]);
    for sim in ["sim", "sim-dual"] {
        let _ = Command::new(o.bin_dir.join("vpc-sim"))
            .arg("down")
            .arg("--state")
            .arg(work.join(sim))
            .output();
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure(o: &Options, work: &Path, host_ns: &str) -> Result<(), String> {
    let state = work.join("sim");
    let capacity = o.pods + o.burst_pods + 10;
    let target = format!("--min-ip-target={capacity}");
    up_one_node_with(&o.bin_dir, &state, &[], &[&target])?;
    let socket = state.join("node1/agent.sock");
    wait_warm(&socket, capacity)?;
    let agent_pid = agent_pid(&state);
    let dual_state = work.join("sim-dual");
    if o.dual {
        up_one_node_with(
            &o.bin_dir,
            &dual_state,
            &["--ip-family", "dual"],
            &[&target],
        )?;
        wait_warm(&dual_state.join("node1/agent.sock"), capacity)?;
    }

    let own = File::open(format!("/var/run/netns/{host_ns}")).map_err(|e| e.to_string())?;
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;

    let vpc = Network {
        label: "vpc-cni",
        plugin: o.bin_dir.join("vpc-cni"),
        cni_path: o.bin_dir.display().to_string(),
        conf: json!({"cniVersion": "1.0.0", "name": "vpc-cni", "type": "vpc-cni", "agentSocket": socket}),
    };
    let dual = Network {
        label: "vpc-cni dual",
        conf: json!({"cniVersion": "1.0.0", "name": "vpc-cni", "type": "vpc-cni", "agentSocket": dual_state.join("node1/agent.sock")}),
        ..vpc.clone()
    };
    let reference = Network {
        label: "ptp+host-local",
        plugin: PathBuf::from(REFERENCE_DIR).join("ptp"),
        cni_path: REFERENCE_DIR.into(),
        conf: json!({
            "cniVersion": "1.0.0", "name": format!("cnilat-{}", std::process::id()), "type": "ptp", "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": work.join("host-local")},
        }),
    };
    if !reference.plugin.exists() {
        return Err(format!(
            "{} missing: apt-get install containernetworking-plugins",
            reference.plugin.display()
        ));
    }

    let floor = floor::measure(
        &vpc.plugin,
        &format!("cnilat-{}", std::process::id()),
        o.pods,
    )?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} pods, each CNI call a new process, one machine, one run\n",
        o.pods
    );
    let _ = writeln!(out, "{:<34} {:>11} {:>11}", "floor", "median ms", "p99 ms");
    for (label, (median, p99)) in [
        ("process start (/bin/true)", floor.exec),
        ("vpc-cni start (VERSION, no agent)", floor.plugin_start),
        ("kernel work of ADD (in-process)", floor.kernel_add),
        ("kernel work of DEL (in-process)", floor.kernel_del),
    ] {
        let _ = writeln!(out, "{label:<34} {median:>11.2} {p99:>11.2}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>11} {:>11}",
        "plugin", "verb", "median ms", "p99 ms"
    );
    let mut nets = vec![&vpc];
    if o.dual {
        nets.push(&dual);
    }
    nets.push(&reference);
    let mut medians = Vec::new();
    for net in &nets {
        if net.label == dual.label {
            // What is timed is a pod with both families.
            let probe = make_pods(host_ns, 1)?;
            let (_, added) = bench::call_output(net, "ADD", &probe[0])?;
            call(net, "DEL", &probe[0])?;
            if added.matches("\"address\"").count() != 2 {
                return Err(format!("a dual-stack ADD answered {added}"));
            }
        }
        let pods = make_pods(host_ns, o.pods)?;
        let adds = time_each(net, "ADD", &pods)?;
        let dels = time_each(net, "DEL", &pods)?;
        // As a runtime does after DEL: the pod namespaces go.
        drop(pods);
        settle();
        for (verb, samples) in [("ADD", &adds), ("DEL", &dels)] {
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>11.2} {:>11.2}",
                net.label,
                verb,
                pct(samples, 50.0),
                pct(samples, 99.0)
            );
        }
        medians.push((pct(&adds, 50.0), pct(&dels, 50.0)));
    }
    let inside = |state: &Path, message: &str| {
        let took = agent_took_ms(state, message);
        if took.is_empty() {
            f64::NAN
        } else {
            pct(&took, 50.0)
        }
    };
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>11.2}   (the agent's own time, from its log)\n{:<16} {:>5} {:>11.2}",
        "  in the agent",
        "ADD",
        inside(&state, "pod added"),
        "  in the agent",
        "DEL",
        inside(&state, "pod deleted")
    );
    if o.dual {
        let _ = writeln!(
            out,
            "{:<16} {:>5} {:>11.2}   (the dual-stack agent's)\n{:<16} {:>5} {:>11.2}",
            "  in the agent",
            "ADD",
            inside(&dual_state, "pod added"),
            "  in the agent",
            "DEL",
            inside(&dual_state, "pod deleted")
        );
    }
    let reference_medians = medians[medians.len() - 1];
    for (net, (add, del)) in nets.iter().zip(&medians).take(nets.len() - 1) {
        let _ = writeln!(
            out,
            "\n{} / ptp+host-local at the median: ADD {:.3}x, DEL {:.3}x",
            net.label,
            add / reference_medians.0,
            del / reference_medians.1
        );
    }
    let floor_add = floor.plugin_start.0 + floor.kernel_add.0;
    let floor_del = floor.plugin_start.0 + floor.kernel_del.0;
    let _ = writeln!(
        out,
        "floor (plugin start + kernel work): ADD {:.2} ms, DEL {:.2} ms; vpc-cni above it: ADD {:+.2} ms, DEL {:+.2} ms",
        floor_add,
        floor_del,
        medians[0].0 - floor_add,
        medians[0].1 - floor_del
    );

    let _ = writeln!(
        out,
        "\n{} pods added {} at a time (wall time):",
        o.burst_pods, o.parallel
    );
    for net in &nets {
        let pods = make_pods(host_ns, o.burst_pods)?;
        let started = Instant::now();
        burst(net, "ADD", &pods, o.parallel)?;
        let wall = started.elapsed();
        let _ = writeln!(
            out,
            "  {:<16} {:>8.1} ms",
            net.label,
            wall.as_secs_f64() * 1e3
        );
        if net.label == "vpc-cni"
            && let Some(rss) = agent_pid.and_then(rss_kib)
        {
            let _ = writeln!(
                out,
                "  (agent resident memory with {} pods: {:.1} MiB)",
                o.burst_pods,
                rss as f64 / 1024.0
            );
        }
        burst(net, "DEL", &pods, o.parallel)?;
        drop(pods);
        settle();
    }
    Ok(())
}

/// Lets the kernel finish tearing down namespaces (and the agent its
/// deferred veth deletions) so one phase does not slow the next.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

fn time_each(net: &Network, verb: &str, pods: &[Pod]) -> Result<Vec<f64>, String> {
    pods.iter()
        .map(|p| call(net, verb, p).map(|d| d.as_secs_f64() * 1e3))
        .collect()
}

fn burst(net: &Network, verb: &str, pods: &[Pod], parallel: usize) -> Result<(), String> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|w| {
                s.spawn(move || {
                    pods.iter()
                        .skip(w)
                        .step_by(parallel)
                        .try_for_each(|p| call(net, verb, p).map(|_| ()))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| "worker panicked".to_string())?)
    })
}

/// The `took_us` of the agent's log lines with `message`, in ms (the time
/// from the request read to the answer, inside the agent).
fn agent_took_ms(state: &Path, message: &str) -> Vec<f64> {
    let log = std::fs::read_to_string(state.join("node1/agent.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter_map(|v| v["took_us"].as_u64())
        .map(|us| us as f64 / 1e3)
        .collect()
}
