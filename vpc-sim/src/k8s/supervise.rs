//! What a node's kubelet does for its static pods: kube-controller-manager
//! and kube-scheduler started again when they exit. Both exit by design on
//! some errors (kube-scheduler on "Scheduler cache is corrupted", seen
//! after API-server restarts); on a real control-plane node the kubelet
//! restarts them within seconds, and without that a simulated cluster
//! whose scheduler exited schedules nothing again.
//!
//! A `vpc-sim supervise` process, started last by `up --kubernetes` and
//! recorded with the cluster's processes, looks every second and starts an
//! exited one again with its arguments, in its cgroup, recorded as
//! `restart` does. etcd and the API server are left alone: they do not
//! exit on their own, and `restart --down-for` keeps them down on purpose.
//! Every start and every `restart` holds the cluster's process lock, so the
//! two never start one process twice; `down` takes it before it stops the
//! supervisor.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{Cluster, cluster_dir, runs, start};

/// The processes the supervisor starts again.
pub const SUPERVISED: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

/// The supervisor's name among the cluster's processes.
pub const SUPERVISOR: &str = "supervisor";

/// How often the supervisor looks.
const EVERY: Duration = Duration::from_secs(1);

/// The cluster's process lock, held while a process of the control plane
/// is stopped or started.
pub fn lock(state: &Path) -> Result<Flock<File>, String> {
    let path = cluster_dir(state).join("procs.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("{}: {e}", path.display()))
}

/// Starts again every supervised process of the cluster in `state` that
/// exited and `may_start` lets start now; returns what it started (name,
/// new pid). Nothing once the cluster is gone.
pub fn once(state: &Path, may_start: &dyn Fn(&str) -> bool) -> Result<Vec<(String, u32)>, String> {
    let _held = lock(state)?;
    let Some(mut cluster) = Cluster::load(state) else {
        return Ok(Vec::new());
    };
    let mut started = Vec::new();
    for name in SUPERVISED {
        let Some(index) = cluster.procs.iter().rposition(|p| p.name == name) else {
            continue;
        };
        let old = cluster.procs[index].clone();
        if runs(&old) || old.args.is_empty() || !may_start(name) {
            continue;
        }
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
        started.push((name.to_string(), pid));
    }
    Ok(started)
}

/// The supervisor's loop, until the cluster's record is gone (`down`). A
/// process that exits again soon after its start waits longer each time
/// before the next (as the kubelet's crash-loop back-off).
pub fn run(state: &Path, say: &dyn Fn(&str)) -> Result<(), String> {
    let state: PathBuf = fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    while Cluster::load(&state).is_some() {
        let now = Instant::now();
        let may_start = |name: &str| backoff.get(name).is_none_or(|b| b.due(now));
        match once(&state, &may_start) {
            Ok(started) => {
                for (name, pid) in started {
                    let wait = backoff.entry(name.clone()).or_default().started(now);
                    say(&format!(
                        "{name} had exited; started again as pid {pid} (next start no sooner \
                         than {} s after an exit)",
                        wait.as_secs()
                    ));
                }
            }
            Err(e) => say(&format!("cannot start an exited process again: {e}")),
        }
        std::thread::sleep(EVERY);
    }
    Ok(())
}

/// When a supervised process may be started again.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Instant>,
    wait: Duration,
}

/// A process that ran this long is well: its next exit is started again
/// at once.
const WELL_AFTER: Duration = Duration::from_secs(60);
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

impl Backoff {
    fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|last| now >= last + self.wait)
    }

    /// Started at `now`: the wait before the start after the next exit.
    fn started(&mut self, now: Instant) -> Duration {
        self.wait = match self.last {
            Some(last) if now.duration_since(last) < WELL_AFTER + self.wait => {
                (self.wait * 2).clamp(FIRST_WAIT, LONGEST_WAIT)
            }
            _ => Duration::ZERO,
        };
        self.last = Some(now);
        self.wait
    }
}

/// Starts the supervisor of the cluster in `state` (the running `vpc-sim`
/// binary, `supervise --state`), in cgroup `cgroup`, and records it.
pub fn spawn(state: &Path, cluster: &mut Cluster, cgroup: &str) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find vpc-sim itself: {e}"))?;
    start(
        state,
        cluster,
        SUPERVISOR,
        cgroup,
        &[],
        &me,
        &[
            "supervise".to_string(),
            "--state".to_string(),
            state.display().to_string(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_exiting_soon_after_each_start_waits_longer_each_time() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.due(t0), "the first exit is started again at once");
        assert_eq!(b.started(t0), Duration::ZERO);
        // Exits 5 s later, and again and again.
        let mut now = t0 + Duration::from_secs(5);
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert!(b.due(now));
            let wait = b.started(now);
            waits.push(wait.as_secs());
            assert!(!b.due(now + wait - Duration::from_millis(1)) || wait.is_zero());
            now += wait + Duration::from_secs(2);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // One that ran well for long is started again at once.
        now += WELL_AFTER + Duration::from_secs(31);
        assert_eq!(b.started(now), Duration::ZERO);
    }
}
