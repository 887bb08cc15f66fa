//! `vpc-sim down`: stop the agents, delete the namespaces, remove the state.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vpc_sim::world::SharedWorld;

use super::up::{Sim, sim_file, world_file};

/// Flags of `down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The directory given to `up`.
    #[arg(long)]
    pub state: PathBuf,
}

/// Runs `down`.
pub fn run(args: DownArgs) -> Result<(), String> {
    down(&args.state)
}

/// Tears a simulation down, as far as it got: agents stopped (SIGTERM,
/// then SIGKILL after 5 s), node and router namespaces deleted, the state
/// directory removed.
pub fn down(dir: &Path) -> Result<(), String> {
    // Only ever tear down what `up` recorded: never a directory that merely
    // exists.
    let bytes = fs::read(sim_file(dir))
        .map_err(|_| format!("nothing is up in {} (no sim.json)", dir.display()))?;
    let sim: Sim =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", sim_file(dir).display()))?;
    // The cluster first: its kubelets and runtimes would otherwise keep
    // using the nodes while they go.
    let mut problems = vpc_sim::k8s::down(dir);
    for node in &sim.nodes {
        if let Some(pid) = node
            .agent_pid
            .filter(|pid| runs(*pid, "vpc-cni-agent", &node.socket))
        {
            stop(pid);
        }
    }
    if let Some(pid) = sim
        .emulator_pid
        .filter(|pid| runs(*pid, "vpc-sim", &world_file(dir)))
    {
        stop(pid);
    }
    if let Ok(world) = SharedWorld::at(&world_file(dir)).read()
        && let Some(fabric) = world.fabric
    {
        problems.extend(fabric.destroy().into_iter().map(|e| e.to_string()));
    }
    // Whatever else carries the simulation's tag (a half-built fabric, pods
    // a client left behind) goes too.
    if !sim.tag.is_empty() {
        let prefix = format!("vpcsim-{}-", sim.tag);
        for entry in fs::read_dir(vpc_sim::fabric::NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix)
                && let Err(e) = vpc_sim::fabric::ip(&["netns", "del", &name])
            {
                problems.push(e.to_string());
            }
        }
    }
    for i in 0..sim.nodes.len() {
        let _ = fs::remove_dir_all(dir.join(format!("node{}", i + 1)));
    }
    for name in [
        "vpc.json",
        "vpc.lock",
        "vpc.tmp",
        "env",
        "credentials",
        "emulator.address",
        "emulator.log",
        "sim.json",
    ] {
        let _ = fs::remove_file(dir.join(name));
    }
    if let Err(e) = fs::remove_dir(dir) {
        problems.push(format!("{} left in place: {e}", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Whether `pid` is still `program` started with `path` (pids get reused).
fn runs(pid: u32, program: &str, path: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(program) && cmdline.contains(&*path.to_string_lossy())
}

fn stop(pid: u32) {
    let raw = Pid::from_raw(pid as i32);
    let _ = kill(raw, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        reap(raw);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(raw, Signal::SIGKILL);
        reap(raw);
    }
}

/// Whether the process still runs: gone, or a zombie nobody has reaped yet
/// (a detached agent's parent is whatever adopted it), counts as stopped.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Collects the exit status when the agent is our own child (as in `demo`).
fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}
