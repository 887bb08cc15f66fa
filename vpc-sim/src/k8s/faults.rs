//! Faults injected into a running cluster, for tests and for operators
//! trying things out: a control-plane process killed (SIGKILL) and started
//! again with the same arguments, and a node switched off (its kubelet,
//! containerd and everything they run killed at once).
//!
//! Both keep `down` whole: a restarted process joins the cgroup the first
//! one was in and replaces it in `DIR/k8s/cluster.json`, so `down` finds
//! and stops the new pid; a switched-off node's cgroups stay (empty) for
//! `down` to remove.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Cluster, Kubectl, alive, alive_at, host, runs, start};

/// The processes [`restart`] knows: the control plane, started in its own
/// network namespace (and started again through the same wrapper).
pub const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// What [`restart`] did.
#[derive(Clone, Debug)]
pub struct Restarted {
    /// The pid killed (none if the process had died already).
    pub killed: Option<u32>,
    /// The new pid.
    pub pid: u32,
    /// From the kill to the new process's readiness (the API server's
    /// `/readyz`; for the others, started).
    pub outage: Duration,
}

/// SIGKILLs the control-plane process `name` of the cluster in `state`,
/// waits `down_for`, and starts it again with the arguments and in the
/// cgroup it had; for `kube-apiserver` waits (up to 120 s) until it is
/// ready again. The old log is kept as `<log>.<old pid>`.
pub fn restart(state: &Path, name: &str, down_for: Duration) -> Result<Restarted, String> {
    if !CONTROL_PLANE.contains(&name) {
        return Err(format!(
            "cannot restart {name:?}: one of {} is expected",
            CONTROL_PLANE.join(", ")
        ));
    }
    let state = &fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    // Held until the new process is recorded: the supervisor does not
    // start the killed one meanwhile.
    let _held = super::supervise::lock(state)?;
    let mut cluster = Cluster::load(state)
        .ok_or_else(|| format!("no cluster is recorded in {}", state.display()))?;
    let index = cluster
        .procs
        .iter()
        .rposition(|p| p.name == name)
        .ok_or_else(|| format!("{name} is not a process of this cluster"))?;
    let old = cluster.procs[index].clone();
    if old.args.is_empty() || old.cgroup.is_empty() {
        return Err(format!(
            "{name} was recorded without its arguments (started by an older vpc-sim); \
             bring the cluster up again"
        ));
    }
    let started = Instant::now();
    let killed = runs(&old).then(|| {
        let _ = kill(Pid::from_raw(old.pid as i32), Signal::SIGKILL);
        old.pid
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until every thread is gone, not just until its memory is: a process
    // closes its descriptors (the API server's port) after it lost its
    // command line, and a killed leader waits as a zombie for its threads.
    while killed.is_some() && !threads_gone(old.pid) {
        if Instant::now() > deadline {
            return Err(format!("{name} ({}) survived SIGKILL for 10 s", old.pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(down_for);
    let kept = old.log.with_extension(format!("log.{}", old.pid));
    let _ = fs::rename(&old.log, &kept);
    cluster.procs.remove(index);
    start(
        state,
        &mut cluster,
        name,
        &old.cgroup,
        &old.wrapper,
        &old.program,
        &old.args,
    )?;
    let pid = cluster.procs.last().expect("just recorded").pid;
    if name == "kube-apiserver" {
        let bin_dir = old.program.parent().unwrap_or(Path::new("."));
        let kubectl = Kubectl::new(bin_dir, state);
        let deadline = Instant::now() + Duration::from_secs(120);
        while kubectl.run(&["get", "--raw", "/readyz"]).is_err() {
            if !alive(pid) {
                return Err(format!(
                    "{name} exited after its restart; its log is {}; last lines:\n{}",
                    old.log.display(),
                    host::tail(&old.log, 12)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not ready within 120 s of its restart"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(Restarted {
        killed,
        pid,
        outage: started.elapsed(),
    })
}

/// Whether every thread of `pid` has exited (zombies included): only then
/// are the descriptors it held, its listening sockets and file locks among
/// them, closed. A killed process's leader is a zombie before its other
/// threads have exited.
pub fn threads_gone(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| !alive_at(&t.path().join("stat")))
}

/// Switches node `n` (1-based) of the cluster in `state` off: SIGKILLs
/// every process of its kubelet's and its runtime's cgroups (the kubelet,
/// containerd, the shims, every container, the vpc-cni agent's among
/// them), again until none is left, as when the machine loses power. Its
/// Node object and its cloud instance are left as they are.
pub fn power_off(state: &Path, n: usize) -> Result<usize, String> {
    let state = &fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let cluster = Cluster::load(state)
        .ok_or_else(|| format!("no cluster is recorded in {}", state.display()))?;
    if n == 0 || n > cluster.nodes.len() {
        return Err(format!(
            "no node{n}: the cluster has nodes 1 to {}",
            cluster.nodes.len()
        ));
    }
    let trees = [
        format!("{}/node{n}", cluster.cgroup),
        format!("{}/node{n}-runtime", cluster.cgroup),
    ];
    let mut killed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pids: Vec<u32> = trees.iter().flat_map(|t| host::pids_in(t)).collect();
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes {pids:?} of node{n} survived SIGKILL for 15 s"
            ));
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_is_gone_once_all_its_threads_are_zombies_or_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(!threads_gone(pid), "a running process is not gone");
        child.kill().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !threads_gone(pid) {
            assert!(Instant::now() < deadline, "still running 5 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A zombie counts as gone (its descriptors are closed); reaped, too.
        assert!(threads_gone(pid));
        child.wait().expect("reap");
        assert!(threads_gone(pid));
    }
}
