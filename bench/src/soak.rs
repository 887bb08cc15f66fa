//! `soak`: many ADD/DEL cycles through the real plugin on one `vpc-sim`
//! node with the netlink data path, each sandbox in a fresh namespace that
//! is removed after its DEL, as a runtime does. Prints the agent's resident
//! memory, open descriptors, store size, and ADD latency percentiles at the
//! start and after every slice of cycles, then the growth from the first
//! slice to the last. Released IPs rest 5 s instead of 30 (the churn is far
//! faster than a real node's).
//!
//!   bench/soak [--cycles 20000] [--minutes 30] [--slices 10] [--parallel 4]
//!
//! Cycles are paced evenly over `--minutes` (about eleven a second by
//! default), as a busy node's churn is, not as fast as the machine goes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bench::{Network, Pod, agent_pid, call, pct, rss_kib, up_one_node, wait_warm};
use serde_json::json;

struct Options {
    cycles: usize,
    minutes: usize,
    slices: usize,
    parallel: usize,
    bin_dir: PathBuf,
}

fn main() {
    let mut o = Options {
        cycles: 20_000,
        minutes: 30,
        slices: 10,
        parallel: 4,
        bin_dir: PathBuf::from("target/release"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            usage(&format!("{} needs a value", pair[0]));
        };
        let number = || -> usize {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag} takes a number")))
        };
        match flag.as_str() {
            "--cycles" => o.cycles = number(),
            "--minutes" => o.minutes = number(),
            "--slices" => o.slices = number(),
            "--parallel" => o.parallel = number(),
            "--bin-dir" => o.bin_dir = PathBuf::from(value),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.cycles == 0 || o.slices == 0 || o.parallel == 0 {
        usage("--cycles, --slices and --parallel must be positive");
    }
    let work = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
    let result = soak(&o, &work);
    let _ = std::process::Command::new(o.bin_dir.join("vpc-sim"))
        .arg("down")
        .arg("--state")
        .arg(work.join("sim"))
        .output();
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = result {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "soak: {msg}\nusage: soak [--cycles N] [--minutes N] [--slices N] [--parallel N] [--bin-dir DIR]"
    );
    std::process::exit(2)
}

/// One row of the table.
struct Sample {
    cycles: usize,
    minutes: f64,
    rss_mib: f64,
    fds: usize,
    store_kib: u64,
    add_p50: f64,
    add_p99: f64,
}

fn soak(o: &Options, work: &Path) -> Result<(), String> {
    let state = work.join("sim");
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    // A released IP rests 5 s, not 30: at ten cycles a second the default
    // cooldown would hold more IPs than the node has.
    up_one_node(
        &o.bin_dir,
        &state,
        &["--warm-ip-target=16", "--ip-cooldown=5s"],
    )?;
    let socket = state.join("node1/agent.sock");
    wait_warm(&socket, 16)?;
    let pid = agent_pid(&state).ok_or("no agent pid in the simulation's state")?;
    let store = state.join("node1/state/state.redb");
    let net = Network {
        label: "vpc-cni",
        plugin: o.bin_dir.join("vpc-cni"),
        cni_path: o.bin_dir.display().to_string(),
        conf: json!({"cniVersion": "1.0.0", "name": "soak", "type": "vpc-cni", "agentSocket": socket}),
    };
    let tag = format!("soak{}", std::process::id());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} ADD/DEL cycles over {} minutes, {} at a time, each sandbox in a fresh namespace\n",
        o.cycles, o.minutes, o.parallel
    );
    let _ = writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>6} {:>10} {:>12} {:>12}",
        "cycles", "minutes", "RSS MiB", "fds", "store KiB", "ADD p50 ms", "ADD p99 ms"
    );
    let started = Instant::now();
    let sample = |cycles: usize, adds: &[f64]| Sample {
        cycles,
        minutes: started.elapsed().as_secs_f64() / 60.0,
        rss_mib: rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        store_kib: std::fs::metadata(&store).map_or(0, |m| m.len() / 1024),
        add_p50: if adds.is_empty() {
            0.0
        } else {
            pct(adds, 50.0)
        },
        add_p99: if adds.is_empty() {
            0.0
        } else {
            pct(adds, 99.0)
        },
    };
    let print = |out: &mut std::io::StdoutLock<'_>, s: &Sample| {
        let _ = writeln!(
            out,
            "{:>8} {:>8.1} {:>9.1} {:>6} {:>10} {:>12.2} {:>12.2}",
            s.cycles, s.minutes, s.rss_mib, s.fds, s.store_kib, s.add_p50, s.add_p99
        );
        let _ = out.flush();
    };
    let first = sample(0, &[]);
    print(&mut out, &first);
    let per_slice = o.cycles.div_ceil(o.slices);
    let pace = std::time::Duration::from_secs_f64(o.minutes as f64 * 60.0 / o.cycles as f64);
    let next = AtomicUsize::new(0);
    let mut samples = Vec::new();
    for slice in 0..o.slices {
        let end = ((slice + 1) * per_slice).min(o.cycles);
        let adds = Mutex::new(Vec::new());
        let failed = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..o.parallel {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= end {
                            next.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                        let slot = started + pace * i as u32;
                        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
                        match cycle(&net, &tag, i) {
                            Ok(ms) => adds.lock().unwrap_or_else(|p| p.into_inner()).push(ms),
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let adds = adds.into_inner().unwrap_or_else(|p| p.into_inner());
        let s = sample(end, &adds);
        print(&mut out, &s);
        samples.push(s);
        if end >= o.cycles {
            break;
        }
    }
    if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
        let _ = writeln!(
            out,
            "\nfrom the first slice to the last: RSS {:+.1} MiB, fds {:+}, store {:+} KiB, ADD p50 {:+.2} ms, p99 {:+.2} ms",
            b.rss_mib - a.rss_mib,
            b.fds as i64 - a.fds as i64,
            b.store_kib as i64 - a.store_kib as i64,
            b.add_p50 - a.add_p50,
            b.add_p99 - a.add_p99
        );
    }
    Ok(())
}

/// One sandbox's life: a fresh namespace, ADD (timed), DEL, the namespace
/// removed. Returns the ADD's latency in ms.
fn cycle(net: &Network, tag: &str, i: usize) -> Result<f64, String> {
    let pod = Pod::new(tag, i)?;
    let took = call(net, "ADD", &pod)?;
    call(net, "DEL", &pod)?;
    // The runtime removes the namespace after DEL (the drop does).
    drop(pod);
    Ok(took.as_secs_f64() * 1e3)
}
