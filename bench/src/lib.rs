//! What the benchmarks share: a one-node `vpc-sim` to measure against,
//! pod namespaces, running a CNI plugin the way kubelet does, the agent's
//! memory, and percentiles.

pub mod floor;
pub mod gateways;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One CNI network to measure: how to call it and where its plugin is.
#[derive(Clone, Debug)]
pub struct Network {
    /// Name in the tables.
    pub label: &'static str,
    /// The plugin binary.
    pub plugin: PathBuf,
    /// `CNI_PATH`.
    pub cni_path: String,
    /// The network configuration.
    pub conf: Value,
}

/// Starts a one-node `vpc-sim` in `state` (8 ENIs of 50 IPs) with extra
/// agent flags, for the benchmarks to measure against.
pub fn up_one_node(bin_dir: &Path, state: &Path, agent_flags: &[&str]) -> Result<(), String> {
    up_one_node_with(bin_dir, state, &[], agent_flags)
}

/// [`up_one_node`] with extra flags for `vpc-sim up` (`--ip-family dual`).
pub fn up_one_node_with(
    bin_dir: &Path,
    state: &Path,
    sim_flags: &[&str],
    agent_flags: &[&str],
) -> Result<(), String> {
    let mut cmd = Command::new(bin_dir.join("vpc-sim"));
    cmd.args([
        "up",
        "--nodes",
        "1",
        "--max-enis",
        "8",
        "--ips-per-eni",
        "50",
        "--state",
    ])
    .arg(state)
    .args(sim_flags);
    for f in agent_flags {
        cmd.arg(format!("--agent-flag={f}"));
    }
    let up = cmd.output().map_err(|e| format!("vpc-sim up: {e}"))?;
    if !up.status.success() {
        return Err(format!(
            "vpc-sim up: {}",
            String::from_utf8_lossy(&up.stderr)
        ));
    }
    Ok(())
}

/// `n` pod namespaces named after `host_ns`.
pub fn make_pods(host_ns: &str, n: usize) -> Result<Vec<Pod>, String> {
    (0..n).map(|i| Pod::new(host_ns, i)).collect()
}

/// A pod: its sandbox id and network namespace (removed on drop).
#[derive(Debug)]
pub struct Pod {
    /// Sandbox (container) id.
    pub id: String,
    /// Namespace name under /var/run/netns.
    pub netns: String,
}

impl Pod {
    /// Pod `i` of `host_ns`.
    pub fn new(host_ns: &str, i: usize) -> Result<Pod, String> {
        let netns = format!("{host_ns}-p{i}");
        ip(&["netns", "add", &netns])?;
        Ok(Pod {
            id: format!("cnilat{i:04}"),
            netns,
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Runs the plugin for `verb` on `pod` as kubelet does; how long it took.
pub fn call(net: &Network, verb: &str, pod: &Pod) -> Result<Duration, String> {
    call_output(net, verb, pod).map(|(took, _)| took)
}

/// [`call`], with what the plugin printed.
pub fn call_output(net: &Network, verb: &str, pod: &Pod) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let mut child = Command::new(&net.plugin)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", &pod.id)
        .env("CNI_NETNS", format!("/var/run/netns/{}", pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &net.cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={}",
                pod.id
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", net.plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(net.conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "{} {verb} {}: {}",
            net.label,
            pod.id,
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    Ok((
        elapsed,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// The `p`th percentile of `samples`.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// Waits until the agent on `socket` has `free` free IPs.
pub fn wait_warm(socket: &Path, free: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok(proto::wire::Response::Pool(view))) =
            proto::client::call(socket, &proto::wire::Request::Pool, Duration::from_secs(5))
        {
            let n = view
                .enis
                .iter()
                .flat_map(|e| &e.ips)
                .filter(|i| i.state == proto::wire::IpState::Free)
                .count();
            if n >= free {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the pool did not reach {free} free IPs within 60 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid of the agent of a one-node `vpc-sim` in `state`.
pub fn agent_pid(state: &Path) -> Option<u32> {
    let sim: Value = serde_json::from_slice(&std::fs::read(state.join("sim.json")).ok()?).ok()?;
    sim["nodes"][0]["agent_pid"].as_u64().map(|p| p as u32)
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A process's resident memory split into its own (anonymous) pages and
/// pages of files it maps (its executable and libraries), in KiB.
pub fn rss_split_kib(pid: u32) -> Option<(u64, u64)> {
    Some((status_kib(pid, "RssAnon:")?, status_kib(pid, "RssFile:")?))
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
