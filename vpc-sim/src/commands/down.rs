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
    let sim: Sim = match fs::read(sim_file(dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: {e}", sim_file(dir).display()))?,
        Err(_) if !dir.exists() => return Err(format!("nothing is up in {}", dir.display())),
        Err(_) => Sim::default(),
    };
    let mut problems = Vec::new();
    for node in &sim.nodes {
        if let Some(pid) = node
            .agent_pid
            .filter(|pid| is_our_agent(*pid, &node.socket))
        {
            stop(pid);
        }
    }
    if let Ok(world) = SharedWorld::at(&world_file(dir)).read()
        && let Some(fabric) = world.fabric
    {
        problems.extend(fabric.destroy().into_iter().map(|e| e.to_string()));
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        problems.push(format!("{}: {e}", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Whether `pid` is still the agent serving `socket` (pids get reused).
fn is_our_agent(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("vpc-cni-agent") && cmdline.contains(&*socket.to_string_lossy())
}

fn stop(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    if kill(pid, None).is_ok() {
        let _ = kill(pid, Signal::SIGKILL);
        reap(pid);
    }
}

/// Collects the exit status when the agent is our own child (as in `demo`).
fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}
